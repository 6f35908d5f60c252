// SPDX-License-Identifier: BSL-1.0
#include "common/files.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include "qed/blkdebug.hpp"
#include "qed/node_options.hpp"

namespace qed::tools {

std::optional<file_identity> identity_of(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return std::nullopt;
    return file_identity{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
}

std::optional<std::uint64_t> allocated_bytes(const std::string& path) {
    if (is_null_name(path)) return 0;  // stores nothing (qemu-img: "disk size: 0 B")
    if (is_blkdebug_name(path)) {      // the file under the fault injection layer
        blkdebug_config c;
        std::string error;
        if (parse_blkdebug_name(path, c, error)) return std::nullopt;
        return allocated_bytes(c.image);
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return std::nullopt;
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

bool file_exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

std::string resolve_backing(const std::string& image_path, const std::string& name) {
    // json:, file:, blkdebug: and null-co: names carry a protocol: taken as they are (as the library and QEMU do).
    if (name.empty() || name.front() == '/' || is_remote_name(name) || is_remote_name(image_path) ||
        is_json_name(name) || name.rfind("file:", 0) == 0 || is_blkdebug_name(name) || is_null_name(name))
        return name;
    const auto slash = image_path.rfind('/');
    return slash == std::string::npos ? name : image_path.substr(0, slash + 1) + name;
}

void remove_file(const std::string& path) {
    ::unlink(path.c_str());
}

}  // namespace qed::tools
