// SPDX-License-Identifier: BSL-1.0
#include "server/exports.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#include "server/option_text.hpp"

namespace qed::nbd {

std::optional<export_spec> parse_export(std::string_view spec, std::string& error) {
    export_spec e;
    bool have_name = false;
    bool have_file = false;
    bool have_format = false;
    bool have_description = false;
    const std::string shown = "--export '" + std::string(spec) + "'";
    for (const std::string& p : split_options(spec)) {
        const auto eq = p.find('=');
        if (eq == std::string::npos) {
            error = shown + ": expected key=value, got '" + p + "'";
            return std::nullopt;
        }
        const std::string key = p.substr(0, eq);
        const std::string value = p.substr(eq + 1);
        auto once = [&](bool& seen) {
            if (seen) error = shown + ": " + key + "= given twice";
            return !std::exchange(seen, true);
        };
        if (key == "name") {
            if (!once(have_name)) return std::nullopt;
            e.o.name = value;
        } else if (key == "file") {
            if (!once(have_file)) return std::nullopt;
            if (value.empty()) {
                error = shown + ": file= is empty";
                return std::nullopt;
            }
            e.o.path = value;
        } else if (key == "readonly") {
            if (e.read_only) {
                error = shown + ": readonly= given twice";
                return std::nullopt;
            }
            e.read_only = parse_bool(value);
            if (!e.read_only) {
                error = shown + ": readonly must be on or off, not '" + value + "'";
                return std::nullopt;
            }
        } else if (key == "format") {
            if (!once(have_format)) return std::nullopt;
            e.o.format = parse_format(value);
            if (!e.o.format) {
                error = shown + ": unknown format '" + value + "' (qed or raw)";
                return std::nullopt;
            }
        } else if (key == "description") {
            if (!once(have_description)) return std::nullopt;
            e.o.description = value;
        } else {
            error = shown + ": unknown key '" + key + "' (name, file, readonly, format, description)";
            return std::nullopt;
        }
    }
    if (!have_name) {
        error = shown + ": name= is required";
        return std::nullopt;
    }
    if (!have_file) {
        error = shown + ": file= is required";
        return std::nullopt;
    }
    return e;
}

namespace {

struct dir_closer {
    void operator()(DIR* d) const noexcept { ::closedir(d); }
};

/// Why `path` is not a QED image, or "" if it is one (by its magic).
std::string not_qed(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return std::string("cannot open it: ") + std::strerror(errno);
    char magic[4] = {};
    ssize_t got;
    do got = ::pread(fd, magic, sizeof magic, 0);
    while (got < 0 && errno == EINTR);
    const int err = errno;
    ::close(fd);
    if (got < 0) return std::string("cannot read it: ") + std::strerror(err);
    if (got != 4 || std::memcmp(magic, "QED\0", 4) != 0) return "not a QED image";
    return {};
}

}  // namespace

bool scan_export_dir(const std::string& dir, bool read_only, std::vector<export_options>& out,
                     const std::function<void(const std::string&)>& log, std::string& error) {
    std::unique_ptr<DIR, dir_closer> d(::opendir(dir.c_str()));
    if (!d) {
        error = "--dir '" + dir + "': " + std::strerror(errno);
        return false;
    }
    std::vector<std::string> names;
    errno = 0;
    while (const dirent* ent = ::readdir(d.get())) {
        const std::string n = ent->d_name;
        if (n != "." && n != "..") names.push_back(n);
    }
    if (errno) {
        error = "--dir '" + dir + "': " + std::strerror(errno);
        return false;
    }
    std::sort(names.begin(), names.end());
    const std::string prefix = dir.empty() || dir.back() == '/' ? dir : dir + "/";
    std::size_t found = 0;
    for (const auto& n : names) {
        const std::string path = prefix + n;
        struct stat st {};
        std::string why;
        if (::stat(path.c_str(), &st) != 0)
            why = std::string("cannot stat it: ") + std::strerror(errno);
        else if (!S_ISREG(st.st_mode))
            why = "not a regular file";
        else
            why = not_qed(path);
        if (!why.empty()) {
            log("--dir '" + dir + "': skipping '" + n + "': " + why);
            continue;
        }
        export_options e;
        e.name = n;
        e.path = path;
        e.format = image_format::qed;
        e.read_only = read_only;
        out.push_back(std::move(e));
        ++found;
    }
    if (!found) {
        error = "--dir '" + dir + "': no QED images in the directory";
        return false;
    }
    return true;
}

}  // namespace qed::nbd
