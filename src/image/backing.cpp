// SPDX-License-Identifier: BSL-1.0
#include "image/backing.hpp"

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "block_file/ssh_file.hpp"
#include "image/file_protocol.hpp"
#include "image/node_open.hpp"
#include "image/qed_image.hpp"
#include "image/raw_image.hpp"
#include "qed/blkdebug.hpp"
#include "table/co_io.hpp"

namespace qed::detail {

std::string resolve_backing_path(const std::string& image_path, const std::string& backing_name, std::string* why) {
    // json:, "file:", blkdebug: and null-co: names carry a protocol, as remote names do:
    // QEMU takes them as they are, not relative to the image.
    if (backing_name.empty() || backing_name.front() == '/' || is_remote_name(backing_name) ||
        is_json_name(backing_name) || backing_name.rfind("file:", 0) == 0 || is_blkdebug_name(backing_name) ||
        is_null_name(backing_name))
        return backing_name;
    if (is_json_name(image_path)) {
        // QEMU's bdrv_dirname: the directory of the file below the format
        // and filters; a quorum has none.
        std::string reason;
        const auto dir = name_directory(image_path, reason);
        if (!dir) {
            if (why) *why = reason;
            return {};
        }
        return *dir + backing_name;
    }
    if (is_blkdebug_name(image_path)) {
        // QEMU's bdrv_dirname of a blkdebug node: its image's directory.
        blkdebug_config c;
        std::string ignored;
        if (!parse_blkdebug_name(image_path, c, ignored)) return resolve_backing_path(c.image, backing_name, why);
    }
    // A remote image has no directory (qed_open refuses a relative name there).
    if (is_remote_name(image_path)) return backing_name;
    const auto slash = image_path.rfind('/');
    if (slash == std::string::npos) return backing_name;
    return image_path.substr(0, slash + 1) + backing_name;
}

namespace {

// Collapse "." components and repeated slashes: purely lexical, safe with
// symlinks (".." is kept). Lets very long but harmless names open.
std::string tidy_path(const std::string& p) {
    std::string out;
    out.reserve(p.size());
    std::size_t i = 0;
    const bool absolute = !p.empty() && p[0] == '/';
    if (absolute) out = "/";
    while (i < p.size()) {
        const std::size_t j = p.find('/', i);
        const std::string part = p.substr(i, j == std::string::npos ? std::string::npos : j - i);
        i = j == std::string::npos ? p.size() : j + 1;
        if (part.empty() || part == ".") continue;
        if (!out.empty() && out.back() != '/') out += '/';
        out += part;
    }
    if (out.empty()) out = ".";
    return out;
}

bool starts_with_dir(const std::string& path, const std::string& dir) {
    if (dir == "/") return true;
    return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/';
}

// Locking options for a file, with a log that notes whether the opener
// said something (then its line, which names the lock, is the one to keep).
// The file may keep the log (remote files report later failures through
// it), so the flag is shared rather than a reference to the caller's frame.
std::shared_ptr<bool> lock_options(file_options& fo, const open_options& o) {
    fo.locking = o.locking;
    fo.force_share = o.force_share;
    auto logged = std::make_shared<bool>(false);
    fo.log = [logged, log = o.log](std::string_view line) {
        *logged = true;
        if (log) log(line);
    };
    return logged;
}

/// QEMU's name for the file an ssh:// name designates; empty if it has none.
std::string ssh_name_of(const std::string& name) {
    ssh_location where;
    std::string why;
    return parse_ssh_name(name, where, why) ? ssh_exact_name(where) : std::string{};
}

/// The one line for a backing file refused by allowed_backing_dir: what was
/// refused (the name and, when it exists, where it really leads) and why.
/// The option that allows it belongs to the program, which adds it.
std::string refused_line(const std::string& path, const char* real, const char* dir) {
    std::string line = "refused to open backing file " + path;
    if (real && path != real) line += std::string(" (") + real + ")";
    return line + ": it is outside the allowed directory " + dir;
}

}  // namespace

std::error_code probe_format(const std::byte* b, std::size_t n, image_format& out, std::string& detail) {
    auto starts = [&](const char* magic, std::size_t len) { return n >= len && std::memcmp(b, magic, len) == 0; };
    if (starts("QED\0", 4)) {
        out = image_format::qed;
        return {};
    }
    struct known {
        const char* magic;
        std::size_t len;
        const char* name;
    };
    static const known others[] = {
        {"QFI\xfb", 4, "qcow2"},
        {"KDMV", 4, "vmdk"},
        {"vhdxfile", 8, "vhdx"},
        {"conectix", 8, "vpc"},
        {"WithoutFreeSpace", 16, "parallels"},
    };
    for (const auto& k : others) {
        if (starts(k.magic, k.len)) {
            detail = std::string("is a ") + k.name + " image; only qed and raw are supported";
            return errc::unknown_format;
        }
    }
    out = image_format::raw;
    return {};
}

file_opener default_opener(const boost::asio::any_io_executor& ex) {
    return default_file_opener{ex};
}

boost::asio::awaitable<file_result> open_through(boost::asio::any_io_executor ex, file_opener opener, std::string path,
                                                 file_options fo) {
    if (!opener.target<default_file_opener>() || !is_ssh_name(path)) {
        std::error_code ec;
        auto file = opener(path, fo, ec);
        co_return file_result{ec, std::move(file)};
    }
    ssh_location where;
    std::string why;
    if (!parse_ssh_name(path, where, why)) {
        if (fo.log) fo.log(path + ": " + why);
        co_return file_result{make_error_code(errc::invalid_argument), nullptr};
    }
    auto [ec, file] = co_await boost::asio::async_initiate<decltype(co::use_tuple), void(boost::system::error_code,
                                                                                         std::shared_ptr<block_file>)>(
        [&ex, &where, &fo, &path](auto handler) {
            async_open_ssh_file(ex, where, fo, path, file_open_handler(std::move(handler)));
        },
        co::use_tuple);
    co_return file_result{ec, std::move(file)};
}

boost::asio::awaitable<device_result> open_on_file(boost::asio::any_io_executor ex, std::shared_ptr<block_file> file,
                                                   std::string name, std::optional<image_format> format,
                                                   open_options options, unsigned depth,
                                                   std::vector<file_identity> chain) {
    auto log = [&](const std::string& line) {
        if (options.log) options.log(line);
    };
    if (!format) {
        std::byte first[64] = {};
        std::error_code sec;
        const std::uint64_t size = file->size(sec);
        if (sec) co_return device_result{sec, nullptr};
        auto block = allocate_aligned(4096, true);
        if (size > 0) {
            if (auto ec = co_await co::read(*file, 0, block.get(), 4096)) {
                log(name + ": " + ec.message());
                co_return device_result{ec, nullptr};
            }
        }
        std::memcpy(first, block.get(), sizeof first);
        image_format f{};
        std::string detail;
        if (auto ec =
                probe_format(first, size < sizeof first ? static_cast<std::size_t>(size) : sizeof first, f, detail)) {
            log(name + ": " + detail);
            co_return device_result{ec, nullptr};
        }
        format = f;
    }
    if (*format == image_format::raw) {
        auto dev = std::make_shared<raw_image>(ex, std::move(file), std::move(name), std::move(options));
        if (auto ec = dev->open()) co_return device_result{ec, nullptr};
        co_return device_result{{}, dev};
    }
    auto dev = std::make_shared<qed_image>(ex, std::move(file), std::move(name), std::move(options));
    if (auto ec = co_await dev->open(depth, std::move(chain))) co_return device_result{ec, nullptr};
    co_return device_result{{}, dev};
}

boost::asio::awaitable<device_result> open_device(boost::asio::any_io_executor ex, std::string path,
                                                  std::optional<image_format> format, open_options options,
                                                  unsigned depth, std::vector<file_identity> chain) {
    if (is_json_name(path)) {
        // A json: name that names a file plainly opens as that file (and the
        // image goes by its name, as in QEMU); any other tree of options is
        // opened node by node.
        std::error_code jec;
        auto tree = parse_json_name(path, options, jec);
        if (!tree) co_return device_result{jec, nullptr};
        auto plain = plain_form(*tree);
        if (!plain)
            co_return co_await open_node(ex, std::move(*tree), format, std::move(options), depth, std::move(chain));
        if (format && plain->format && *format != *plain->format) {
            if (options.log)
                options.log(path + ": the format given (" + std::string(to_string(*format)) +
                            ") is not the driver the options name (" + std::string(to_string(*plain->format)) + ")");
            co_return device_result{errc::invalid_argument, nullptr};
        }
        path = plain->path;
        if (plain->format) format = plain->format;
        if (plain->character_device) options.character_device = true;
    }
    path = without_file_protocol(path);
    if (!options.opener) options.opener = default_opener(ex);
    file_options fo;
    fo.read_only = options.read_only;
    fo.direct = options.direct;
    fo.backend = options.backend;
    fo.character_device = options.character_device;  // the image only, never a backing file
    // Set when the opener explained the failure itself (a lock, a connection).
    const auto logged = lock_options(fo, options);
    auto opening = open_through(ex, options.opener, path, fo);  // named: see README, GCC 12 and coroutines
    auto [ec, file] = co_await std::move(opening);
    if (!file) {
        if (!ec) ec = std::make_error_code(std::errc::io_error);
        if (options.log && !*logged) options.log(path + ": " + ec.message());
        co_return device_result{ec, nullptr};
    }
    // An ssh:// image goes by QEMU's name for it (user, port and all).
    if (std::string exact; is_ssh_name(path) && !(exact = ssh_name_of(path)).empty()) path = exact;
    co_return co_await open_on_file(ex, std::move(file), std::move(path), format, std::move(options), depth,
                                    std::move(chain));
}

boost::asio::awaitable<device_result> open_backing_chain(boost::asio::any_io_executor ex, std::string path,
                                                         std::optional<image_format> format, const open_options& parent,
                                                         unsigned depth, std::vector<file_identity> chain) {
    auto log = [&](const std::string& line) {
        if (parent.log) parent.log(line);
    };
    if (path.empty()) {
        // resolve_backing_path found no directory for a relative name.
        log("a relative backing file name cannot be resolved: the image's node has no directory (a quorum)");
        co_return device_result{errc::bad_backing_name, nullptr};
    }
    if (depth > parent.max_backing_depth) {
        log(path + ": backing chain deeper than " + std::to_string(parent.max_backing_depth) + " levels");
        co_return device_result{errc::backing_chain_too_deep, nullptr};
    }
    if (is_json_name(path)) {
        std::error_code jec;
        auto tree = parse_json_name(path, parent, jec);
        if (!tree) co_return device_result{jec, nullptr};
        if (auto plain = plain_form(*tree)) {
            path = plain->path;
            if (plain->format) format = plain->format;
        } else if (parent.allowed_backing_dir) {
            // Only a plain file can be checked against the directory.
            log(path +
                ": backing file refused: only a json: name that names one file can be checked against the "
                "allowed directory " +
                *parent.allowed_backing_dir);
            co_return device_result{errc::backing_not_allowed, nullptr};
        } else {
            open_options child = parent;
            child.read_only = true;
            child.repair_on_open = false;
            child.character_device = false;
            co_return co_await open_node(ex, std::move(*tree), format, std::move(child), depth, std::move(chain));
        }
    }
    path = without_file_protocol(path);
    const bool remote = is_remote_name(path);
    const bool null_device = is_null_name(path);  // nothing to read, nothing to leak
    std::string target =
        remote || null_device || is_blkdebug_name(path) ? path : tidy_path(path);  // a URI's "//" is not a path's
    if (parent.allowed_backing_dir && is_blkdebug_name(path)) {
        // Its rules file and inner file are names of their own, which the
        // directory check below does not see.
        log(path + ": blkdebug backing file refused (backing files must lie in " + *parent.allowed_backing_dir + ")");
        co_return device_result{errc::backing_not_allowed, nullptr};
    }
    if (parent.allowed_backing_dir && remote && !parent.allow_remote_backing) {
        log(path + ": remote backing file refused (backing files must lie in " + *parent.allowed_backing_dir +
            "; allow remote ones with qed-nbd --allow-remote-backing, open_options::allow_remote_backing)");
        co_return device_result{errc::backing_not_allowed, nullptr};
    }
    if (parent.allowed_backing_dir && !remote && !null_device) {
        // Canonical paths: symlinks and ".." can't lead out of the directory.
        char dir_buf[PATH_MAX];
        char file_buf[PATH_MAX];
        if (!::realpath(parent.allowed_backing_dir->c_str(), dir_buf)) {
            const auto ec = std::error_code(errno, std::system_category());
            log(*parent.allowed_backing_dir + ": allowed backing directory: " + ec.message());
            co_return device_result{ec, nullptr};
        }
        if (!::realpath(target.c_str(), file_buf)) {
            // It doesn't exist (or can't be resolved): say which, but only if
            // its directory is inside -- don't reveal what lies outside.
            const int err = errno;
            const auto slash = target.rfind('/');
            const std::string parent_dir = slash == std::string::npos ? "." : target.substr(0, slash == 0 ? 1 : slash);
            char parent_buf[PATH_MAX];
            if (::realpath(parent_dir.c_str(), parent_buf) &&
                (std::string(parent_buf) == dir_buf || starts_with_dir(parent_buf, dir_buf))) {
                // The image's own open reports it (one line naming both files).
                co_return device_result{std::error_code(err, std::system_category()), nullptr};
            }
            log(refused_line(path, nullptr, dir_buf));
            co_return device_result{errc::backing_not_allowed, nullptr};
        }
        if (!starts_with_dir(file_buf, dir_buf)) {
            log(refused_line(path, file_buf, dir_buf));
            co_return device_result{errc::backing_not_allowed, nullptr};
        }
        target = file_buf;
    }
    open_options child = parent;
    child.read_only = true;
    child.repair_on_open = false;
    if (!child.opener) child.opener = default_opener(ex);
    file_options fo;
    fo.read_only = true;
    fo.direct = parent.direct;
    fo.backend = parent.backend;
    // A backing file is locked as a reader that needs it to hold still, as
    // QEMU's QED driver locks it, whether the overlay is writable or not.
    lock_options(fo, child);
    auto opening = open_through(ex, child.opener, target, fo);  // named: see README, GCC 12 and coroutines
    auto [ec, file] = co_await std::move(opening);
    if (!file) {
        // The image's own open reports it (one line naming both files).
        if (!ec) ec = std::make_error_code(std::errc::io_error);
        co_return device_result{ec, nullptr};
    }
    const file_identity id = file->identity();
    for (const auto& above : chain) {
        if (above == id) {
            log(path + ": backing file refers back into its own chain");
            co_return device_result{errc::backing_loop, nullptr};
        }
    }
    chain.push_back(id);
    co_return co_await open_on_file(ex, std::move(file), path, format, std::move(child), depth, std::move(chain));
}

}  // namespace qed::detail
