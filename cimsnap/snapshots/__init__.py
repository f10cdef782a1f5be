"""The Snapshots service.

containerd's snapshotter semantics over the SQLite metastore and CIM layers.
"""
