"""The Diff service's logic: applying layer blobs into CIM layers, exporting them, unpacking.

``differ`` (Apply and Compare over plain types), ``content`` (reading and writing blobs in
containerd's content store), ``mediatypes``, ``containerd`` (the small gRPC clients of
containerd's own services) and ``unpack`` (containerd's unpacker, for 1.6). Nothing here
serves gRPC: ``cimsnap.daemon`` adapts the differ.
"""
