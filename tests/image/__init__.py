"""The container images under podman (``make test-image``; not part of ``make test``)."""
