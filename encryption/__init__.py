"""WireGuard and IPsec key management, peers, rotation, status and audit."""
