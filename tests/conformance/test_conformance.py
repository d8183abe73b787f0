"""Cilium's clustermesh-apiserver conformance corpus against the real stack (`make conformance`)."""

from __future__ import annotations

import pytest

from lab.conformance import SKIPPED, VERSION_SKEWED, corpus_files, run_corpus, summary_line

FILES = corpus_files()


def test_corpus_scope() -> None:
    """The 16 apiserver files and servicesync.txtar; only [dev-only] EndpointSlice exports skipped."""
    assert len(FILES) == 17, FILES
    assert set(SKIPPED) <= set(FILES) and all(reason.startswith("[dev-only]") for reason in SKIPPED.values())
    assert set(VERSION_SKEWED) <= set(FILES) and not set(VERSION_SKEWED) & set(SKIPPED)


@pytest.mark.timeout(900)
def test_conformance_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = run_corpus(FILES)
    with capsys.disabled():
        print("\n" + "\n".join(f"  {o.status:7} {o.rel} {o.detail.splitlines()[0] if o.detail else ''}"
                               for o in outcomes))
        print("  " + summary_line(outcomes))
    failed = [o for o in outcomes if o.status == "failed"]
    assert not failed, "\n\n".join(f"{o.rel}:\n{o.detail}" for o in failed)
    assert sum(o.status == "passed" for o in outcomes) == len(FILES) - len(SKIPPED)
