"""Compiles the request path's modules with Cython (the .pxd beside each
declares its classes' attributes and methods as C). Optional: without a C
compiler the same modules run as plain Python, only slower
(docs/architecture.md, "Compiled core")."""
import glob
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class ParallelBuildExt(build_ext):
    """C files compiled side by side (a minute serially on two cores)."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1


def has_nghttp2() -> bool:
    """libnghttp2's headers are installed (Debian: libnghttp2-dev)."""
    return any(os.path.exists(os.path.join(d, "nghttp2", "nghttp2.h"))
               for d in ("/usr/include", "/usr/local/include", os.environ.get("NGHTTP2_INCLUDE", "/nonexistent")))


def _cimports_nghttp2(pxd: str) -> bool:
    with open(pxd, encoding="utf-8") as f:
        return "exchange.nghttp2 cimport" in f.read()


def extensions():
    if os.environ.get("TOLLHOUSE_PURE_PYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    # A module with a .pxd beside it is compiled (tollhouse.compiled_modules() says the same);
    # one that cimports the nghttp2 binding only where the binding is built (without it
    # that module runs as plain Python, and serves no HTTP/2 anyway).
    sources = sorted(pxd for pxd in glob.glob("src/tollhouse/**/*.pxd", recursive=True)
                     if os.path.exists(pxd[:-4] + ".py") and (has_nghttp2() or not _cimports_nghttp2(pxd)))
    modules = [Extension(pxd[4:-4].replace("/", "."), [pxd[:-4] + ".py"], optional=True) for pxd in sources]
    if has_nghttp2():
        # HTTP/2 (docs/http2.md): the binding to the C library, built where its headers are.
        modules.append(Extension("tollhouse.exchange.nghttp2", ["src/tollhouse/exchange/nghttp2.pyx"],
                                 libraries=["nghttp2"], optional=True))
    return cythonize(modules, nthreads=os.cpu_count() or 1, quiet=True,
                     compiler_directives={"language_level": 3, "annotation_typing": False})


setup(ext_modules=extensions(), cmdclass={"build_ext": ParallelBuildExt})
