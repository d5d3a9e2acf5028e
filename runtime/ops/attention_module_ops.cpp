// Runtime forwards of the attention modules (none yet).
#include "runtime/ops/ops.h"

namespace qforge::runtime::ops {

void register_attention_module_ops(OpRegistry& /*registry*/) {}

}  // namespace qforge::runtime::ops
