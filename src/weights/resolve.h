// Model name -> local path, shared by the Python API (through the C API) and the binaries.
// Nothing is downloaded here.
#pragma once
#include <string>

namespace ffspec {

// given non-empty: that folder; else $FF_CACHE_PATH; else ~/.cache/flexflow_spec.
std::string cache_folder(const std::string &given);

// name: a checkpoint directory or a .gguf file (used as is), or a Hugging Face id "org/name"
// looked up in the Hugging Face cache ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub:
// the snapshot refs/main points at, else the newest complete one) and then in our cache
// folder (<cache>/<org>/<name>, <cache>/models/<org>/<name>, or a hub-style
// <cache>/models--org--name). Throws Error(FFS_ERR_NOT_FOUND) listing every place looked at
// and how to provide the model.
std::string resolve_model(const std::string &name, const std::string &cache_folder_given);

}  // namespace ffspec
