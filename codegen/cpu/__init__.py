"""Fast CPU code without tuning: the default CPU build (cpu_kernels="auto" picks
"blas" when OpenBLAS for the target is at hand, else "schedule"; see
codegen.build.resolve_cpu_kernels).

- blas.py: a Relax pass that sends float32 MatMul/Gemm and Conv (1x1 directly,
  grouped ones and run-time weights through onnxforge_conv2d: im2col per block of
  pixels, in cache) to OpenBLAS sgemm through T.call_extern into kernels.c, with a
  following bias and activation folded in (epilogues.py, activation.h); depthwise
  conv to a hand-written kernel there; small-row products with a weight, and convs
  with groups 1 and a packable weight (direct, no im2col), to gemm_packed.c.
  The C files are compiled into the exported library, which links OpenBLAS (the
  scipy-openblas32 wheel, which PyPI has for x86_64 and aarch64) as a DT_NEEDED
  dependency.
- schedules.py: a default CPU schedule (parallel outer loops, vectorized inner
  loops) for every other TIR kernel, after dlight's CPU rules.
- pipeline.py: the Relax pipeline and the link options for both.
- profile.py: per-kernel table (FLOPs, time, GFLOP/s) of a compiled model.
"""

# Build modes, in codegen.build.resolve_cpu_kernels (here: no tvm import needed to check one)
CPU_KERNELS = ("auto", "blas", "schedule", "tvm")
