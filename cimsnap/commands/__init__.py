"""Command groups of the ``cimsnap`` CLI; see ``cimsnap.cli``."""
