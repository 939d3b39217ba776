# The instruction-set level of the C tile kernels in this extension (included by both
# Cython kernels; each extension links its own tables, see _dispatch.c).  fastattn._isa
# is the Python side: level names, FASTATTN_ISA, switching both extensions together.

cdef extern from "_kernels.h" nogil:
    int fa_cpu_level()
    int fa_level_built(int level)
    int fa_select_level(int level)
    int fa_active_level()
    int fa_bf16_products()


def cpu_level():
    """The best level (an index into fastattn._isa.LEVELS) this CPU supports."""
    return fa_cpu_level()


def level_built(int level):
    """Whether this extension was built with the kernels of ``level``."""
    return bool(fa_level_built(level))


def select_level(int level):
    """Make ``level`` the active one; False where it was not built or the CPU lacks it."""
    return fa_select_level(level) == 0


def active_level():
    """The active level (an index into fastattn._isa.LEVELS)."""
    return fa_active_level()
