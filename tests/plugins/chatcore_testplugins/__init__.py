"""Plugins for chatcore's own tests, importable by dotted name when
tests/plugins is on sys.path (``--plugins chatcore_testplugins.shout``)."""
