/* Stand-ins for the TensorRT libraries, so that the real TensorRT Python bindings
 * (tensorrt_bindings/tensorrt.so from PyPI's tensorrt-cu12/cu13-bindings wheels) can be
 * imported and inspected on a machine without TensorRT or a GPU. Tests only.
 *
 * The bindings' extension module links against libnvinfer, libnvinfer_plugin and libnvonnxparser
 * and needs only these C entry points (`nm -D --undefined-only tensorrt.so`). Every stub returns
 * NULL / 0: nothing may be built or run through them; the tests only read the module's classes,
 * enums and pybind signatures. Compiled once per library with -DLIB_NVINFER, -DLIB_NVINFER_PLUGIN
 * or -DLIB_NVONNXPARSER and the soname the module needs (libnvinfer.so.10, ...so.11).
 */
#include <stddef.h>

#ifdef LIB_NVINFER
void *createInferBuilder_INTERNAL(void *logger, int version) { (void)logger; (void)version; return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { (void)logger; (void)version; return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version)
{ (void)engine; (void)logger; (void)version; return NULL; }
void *getPluginRegistry(void) { return NULL; }
void *getBuilderPluginRegistry(int capability) { (void)capability; return NULL; }
#endif

#ifdef LIB_NVINFER_PLUGIN
int initLibNvInferPlugins(void *logger, const char *plugin_namespace) { (void)logger; (void)plugin_namespace; return 0; }
#endif

#ifdef LIB_NVONNXPARSER
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version)
{ (void)network; (void)logger; (void)version; return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version)
{ (void)refitter; (void)logger; (void)version; return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
#endif
