#pragma once
// extra_vars: a YAML value as JSON, read the way Ansible would have read it
// from YAML. Internal to controld/config/.

#include <rapidjson/document.h>
#include <yaml-cpp/yaml.h>

#include <string>

#include "controld/config/reader.hpp"

namespace ondemand::controld::config_detail {

// Plain scalars that look like numbers or booleans become numbers and
// booleans, quoted ones stay strings; a problem (a duplicate key) is reported
// at `path`/`line` and makes it return false.
bool yamlToJson(const YAML::Node& node, rapidjson::Value& out, rapidjson::Document::AllocatorType& alloc,
                const std::string& path, int line, Problems& problems);

}  // namespace ondemand::controld::config_detail
