"""Cilium-compatible WireGuard control: node keys, the ``cilium_wg0`` device driven through ``wg`` /
``ip`` (kernel WireGuard, or ``wireguard-go`` where the kernel lacks it), and desired peers."""
