// Force-included into every translation unit by setup.py (-include / --pre-include) so that a _C built on a newer
// glibc (this machine: 2.36) loads on glibc 2.28, the manylinux_2_28 floor. auditwheel found exactly two kinds of
// reference that raise the floor; each is bound to what glibc 2.28 has:
// - exp and log: glibc 2.29 gave them new default versions (no SVID error wrapper); the GLIBC_2.2.5 ones compute
//   the same values and also set errno.
// - __libc_single_threaded (glibc 2.32), read by libstdc++'s reference counting to skip atomics in single-threaded
//   processes: a hidden copy of our own that is always 0 ("not single-threaded"), so the counts stay atomic.
#pragma once
#include <features.h>
#if defined(__cplusplus) && defined(__GLIBC__) && defined(__x86_64__) && !defined(__CUDA_ARCH__)
__asm__(".symver exp,exp@GLIBC_2.2.5");
__asm__(".symver log,log@GLIBC_2.2.5");
extern "C" {
__attribute__((visibility("hidden"))) inline char __libc_single_threaded = 0;
}
#endif
