"""Course-shaped batch norms: ``cs231n/layers.py`` of assignment 2 as students hand it in.

Each module is one student's file (the parts that matter to batch norm): the course's
template with its docstrings, its ``# TODO`` blocks filled in, and whatever the template
leaves alone left alone (``spatial_batchnorm_*`` returning ``(None, None)`` until the student
reaches it, ``cache`` left as ``None`` in test mode).  ``staged``, ``compact``, ``stub_spatial``
and ``forward_only`` are correct; ``bug_*`` modules are each one real mistake.  Every module is
self-contained (a student's file imports nothing of the others), so it can be copied and run
on its own: ``bnverify check layers --kind numpy-cs231n``.
"""
