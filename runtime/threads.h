// The process-wide thread setting. One number governs oneTBB (the kernels' parallel_for) and
// OpenBLAS; BLAS calls always run single-threaded inside TBB tasks, so the two never
// oversubscribe the cores.
#pragma once

namespace qforge::runtime {

// n <= 0 means "all hardware threads". Safe to call again to change the setting.
void set_num_threads(int n);
int num_threads();
int hardware_threads();

}  // namespace qforge::runtime
