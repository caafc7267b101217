"""Three shims for Triton 3.6's interpreter (TRITON_INTERPRET=1), CPU semantics tests only.

1. The interpreter turns a runtime scalar used as a loop bound into an index
   with ``int(handle.data)``, where ``data`` is a 1-element array; numpy 2.4
   made that an error ("only 0-dimensional arrays can be converted to Python
   scalars").  The patch takes the single element instead.
2. The interpreter stores bf16 as uint16 and its ``tl.dot`` multiplies those
   raw codes as integers (garbage results).  The patch decodes bf16 operands to
   float32 (exact: the code shifted left by 16) before the matmul.
3. The interpreter lowers ``maxnum``/``minnum`` (``tl.maximum``/``tl.minimum``
   with the default ``propagate_nan``) to ``np.maximum``/``np.minimum``, which
   propagate NaN; LLVM's maxnum, and the GPU's ``max.f32``, return the other
   operand.  The patch uses ``np.fmax``/``np.fmin`` (the NaN-propagating
   ``tl.PropagateNan.ALL`` forms keep ``np.maximum``/``np.minimum``).

Both change only those conversions and are applied only when the interpreter
is in use; compiled kernels never see them.
"""

from __future__ import annotations

_done = False


def apply() -> None:
    global _done
    if _done:
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched

    import numpy as np
    import triton.language as tl

    builder = interpreter.InterpreterBuilder
    original_dot = builder.create_dot

    def _f32(h):
        if h.dtype == tl.bfloat16:
            return interpreter.TensorHandle((h.data.astype(np.uint32) << np.uint32(16)).view(np.float32),
                                            tl.float32)
        return h

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original_dot(self, _f32(a), _f32(b), d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot
    builder.create_maxnumf = lambda self, lhs, rhs: self.binary_op(lhs, rhs, np.fmax)
    builder.create_minnumf = lambda self, lhs, rhs: self.binary_op(lhs, rhs, np.fmin)
    _done = True
