/* What the C kernel files share of the module around them: TVM's thread pool
 * (libtvm_runtime's C backend API, present wherever the module runs) and the two
 * onnxforge functions every file asks before it launches or picks an ISA variant, and
 * the per-thread scratch buffers. */
#ifndef ONNXFORGE_THREAD_POOL_H
#define ONNXFORGE_THREAD_POOL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct { void *sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv *penv, void *cdata);
int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void *cdata, int num_task);
/* all tasks of a launch wait here for each other */
int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv *penv);

/* Work below which a kernel runs on the calling thread alone. TVM's pool workers sleep
 * as soon as they run out of work (runtime.py: no spinning, which a loaded machine
 * cannot afford), and waking one took 15-80 us per launch on a 2-core VM: the PP-OCR
 * direction classifier (80 small kernels) ran in 2.0-2.5 ms on two threads against
 * 0.98 ms on one. 2 MFLOP is 20-40 us on one core. Tests define both as 0 to run the
 * split paths on small sizes. */
#ifndef ONNXFORGE_PARALLEL_MIN_FLOPS
#define ONNXFORGE_PARALLEL_MIN_FLOPS (1LL << 21)
#endif
/* the same for kernels that stream memory (values read and written) */
#ifndef ONNXFORGE_PARALLEL_MIN_VALUES
#define ONNXFORGE_PARALLEL_MIN_VALUES (1LL << 17)
#endif

/* kernels.c: inside a task of TVM's pool (run on the calling thread: no nested launch) */
int32_t onnxforge_in_serial(void);
/* gemm_packed.c: 0 baseline, 1 AVX2+FMA, 2 AVX-512F, capped by ONNXFORGE_CPU_ISA */
int32_t onnxforge_cpu_isa_level(void);

/* A scratch buffer kept per thread (declare it `static __thread Scratch`), grown as
 * needed and never shrunk: each pool thread allocates once per process, not per call.
 * NULL when the allocation fails. */
typedef struct { float *data; size_t len; } Scratch;

static inline float *scratch_grow(Scratch *s, size_t n) {
  if (n > s->len) {
    free(s->data);
    s->data = (float *)malloc(sizeof(float) * n);
    s->len = s->data ? n : 0;
  }
  return s->data;
}

#ifdef __cplusplus
}
#endif

#endif
