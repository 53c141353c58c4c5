"""NumPy kernels: the reference meaning of every op, forward and backward side by side.

Every kernel takes float arrays in PyTorch's layout (batch first) and returns ``(out, backward)``.
``backward(d_out)`` returns one gradient per array argument, in argument order, with ``None``
for arguments that are absent or not differentiable (and for the inputs when a kernel that
takes the keyword ``input_grad`` is given False: the interpreter says so when no input needs
a gradient); it may be called at most once, so a
kernel is free to release or reuse what it saved. Outputs and gradients may share memory
with inputs or saved arrays (dropout in evaluation returns its input), so callers treat them
as read-only. Kernels are dtype-generic: float32 in training, float64 in the gradient checks.
"""

from nnspec.backends.numpy.kernels import compile_cache

compile_cache.install()  # before any loop below is declared: numba picks its cache then
