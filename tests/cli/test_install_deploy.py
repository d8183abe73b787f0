"""deploy/: the rendered copy for GitOps users must be what the renderer gives today."""

from __future__ import annotations

from pathlib import Path

from clustermesh_cli.install import names, render_manifests
from clustermesh_cli.install.render import REGENERATE, deploy_options, deploy_yaml
from clustermesh_cli.install.yamlout import load_documents

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_deploy_manifest_is_up_to_date() -> None:
    path = DEPLOY / "clustermesh.yaml"
    assert path.exists(), f"deploy/clustermesh.yaml is missing: generate it with `{REGENERATE}`"
    current = path.read_text()
    assert current == deploy_yaml(), f"deploy/clustermesh.yaml is stale: regenerate it with `{REGENERATE}`"


def test_deploy_manifest_is_the_default_install_of_the_placeholder_cluster() -> None:
    docs = load_documents((DEPLOY / "clustermesh.yaml").read_text())
    assert docs == render_manifests(deploy_options())
    config = next(d for d in docs if d["metadata"]["name"] == names.CONFIG_MAP)
    assert (config["data"]["cluster-name"], config["data"]["cluster-id"]) == ("cluster1", "1")
    header = (DEPLOY / "clustermesh.yaml").read_text().split("\n---\n", 1)[0]
    for text in ("cluster1", "--cluster-name NAME --cluster-id ID", REGENERATE, *names.RUNTIME_SECRETS):
        assert text in header, f"the header should mention {text!r}"


def test_deploy_readme_says_how_to_render_and_regenerate() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for text in ("clustermesh enable --context CONTEXT --cluster-name NAME --cluster-id ID --dry-run -o yaml",
                 "python -m clustermesh_cli.install.render", REGENERATE,
                 *names.RUNTIME_SECRETS):
        assert text in readme, f"deploy/README.md should mention {text!r}"
