// Makes the extension importable as the Python module fastflow._C. Importing it loads the library,
// whose static initialisers register the fastflow:: operators with the dispatcher (torch.ops.fastflow);
// the module itself is empty, so no pybind11 (and no torch/extension.h) is needed.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastflow operators, registered as torch.ops.fastflow", -1,
                               nullptr};
  return PyModule_Create(&module);
}
