"""Build of fastrnn's compiled extension: Cython loops + C kernels, OpenMP when available.

OpenMP is detected by compiling a tiny program (as scikit-learn does); without it, or
with FASTRNN_NO_OPENMP=1, the build still works and runs serially.
"""
import glob
import os
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNEL_SOURCES = ["src_c/dispatch.c", "src_c/scratch.c", "src_c/kernels_portable.c",
                  "src_c/kernels_avx2.c", "src_c/kernels_avx512.c", "src_c/kernels_avx512_bf16.c"]
OPENMP_TEST = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


# (compile flags, link flags) to try in turn: GCC/clang; Apple clang with libomp (its
# include and library paths come from CFLAGS/LDFLAGS, e.g. set by cibuildwheel); MSVC
OPENMP_CANDIDATES = ((["-fopenmp"], ["-fopenmp"]), (["-Xpreprocessor", "-fopenmp"], ["-lomp"]),
                     (["/openmp"], []))


def openmp_flags(compiler):
    """(compile flags, link flags) for OpenMP, or None if the compiler lacks it."""
    if os.environ.get("FASTRNN_NO_OPENMP") == "1":
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "test_openmp.c")
        with open(src, "w") as f:
            f.write(OPENMP_TEST)
        for cflags, ldflags in OPENMP_CANDIDATES:
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, "test_openmp", output_dir=tmp,
                                         extra_postargs=ldflags)
                return cflags, ldflags
            except Exception:  # a compile or link error: try the next spelling
                continue
    return None


class BuildExt(build_ext):
    def build_extensions(self):
        flags = openmp_flags(self.compiler)
        if flags is None:
            print("fastrnn: building WITHOUT OpenMP (serial loops)", file=sys.stderr)
        for ext in self.extensions:
            if flags is not None:
                ext.extra_compile_args += flags[0]
                ext.extra_link_args += flags[1]
        super().build_extensions()


def extension(name, sources, compile_args, include_dirs=(), macros=()):
    """One compiled module of fastrnn (compile flags for GCC/clang, or /O2 for MSVC)."""
    return Extension(
        name, sources=sources, include_dirs=[*include_dirs, np.get_include()],
        extra_compile_args=compile_args if sys.platform != "win32" else ["/O2"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), *macros],
        depends=sorted(glob.glob("src_c/*.h")) if include_dirs else [])


extensions = [
    # -O3 and FMA contraction for the vectorised kernels; no -ffast-math (it breaks NaN
    # handling), no -march=native (kernels for each instruction set are built and chosen at
    # run time); rebuilt when a kernel header changes
    extension("fastrnn._rnn", ["fastrnn/_rnn.pyx"] + KERNEL_SOURCES, ["-O3", "-ffp-contract=fast"],
              include_dirs=["src_c"]),
    # no FMA contraction (the layers' arithmetic follows torch's roundings); sqrt without
    # errno, so that loops calling it vectorise
    extension("fastrnn._ops", ["fastrnn/_ops.pyx"], ["-O3", "-fno-math-errno"]),
    # NumPy's allocator hook (NEP 49) is part of the 1.22+ C API
    extension("fastrnn._memory", ["fastrnn/_memory.pyx"], ["-O2"], include_dirs=["src_c"],
              macros=[("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION")]),
]

setup(
    ext_modules=cythonize(extensions, compiler_directives={"language_level": 3}),
    cmdclass={"build_ext": BuildExt},
)
