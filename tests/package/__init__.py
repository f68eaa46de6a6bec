"""The package as PyPI would get it (``make test-package``; not part of ``make test``)."""
