// CBLAS from either Debian's OpenBLAS (plain cblas_* names) or PyPI's scipy-openblas32
// (names prefixed scipy_; FFS_BLAS_SCIPY_PREFIX set by CMake).
#pragma once
#ifdef FFS_BLAS_SCIPY_PREFIX
#include <cblas.h>
#define cblas_sgemm scipy_cblas_sgemm
#define cblas_sgemv scipy_cblas_sgemv
#else
#include <cblas.h>
#endif
