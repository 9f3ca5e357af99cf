"""The container image: built from the Dockerfile and run by a private dockerd."""
