"""Everything needed to run an avatar: geometry, audio features, networks, bundles and backends.

This package never imports ``realtime`` or ``offline_training``.
"""

__version__ = "0.1.0"
