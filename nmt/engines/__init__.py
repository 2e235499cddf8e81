"""Speed paths, each an engine over the plain model (``nmt.model``), which imports none of them:

- ``teacher_forcing``: CPU training, gradients summed over the decoder's steps (and a fused step);
- ``tracing``: the decoder step as a TorchScript trace, for search on a CPU;
- ``int8``: dynamic int8 quantization of the matrix layers, for search on a CPU;
- ``cuda_graphs``: beam search on a GPU, each step replayed as a CUDA graph.

Each gives the plain path's results (exactly, or for int8 up to its rounding); the tests compare them.
"""
