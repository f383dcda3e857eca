"""The ``stableface`` command line.

All the work happens in ``engines``, ``offline_training`` and ``realtime``.
"""
