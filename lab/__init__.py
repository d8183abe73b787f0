"""The lab: whole meshes on one Linux machine without Docker."""
