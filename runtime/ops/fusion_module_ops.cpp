// Runtime forwards of the fusion modules (none yet).
#include "runtime/ops/ops.h"

namespace qforge::runtime::ops {

void register_fusion_module_ops(OpRegistry& /*registry*/) {}

}  // namespace qforge::runtime::ops
