"""The plugins bundled with chatcore.

Each module is an ordinary plugin, registered through the ``chatcore``
entry-point group like any third-party plugin. ``commands`` is always on; the
others are selected with ``chatcore serve --plugins``.
"""
