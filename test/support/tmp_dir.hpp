// SPDX-License-Identifier: BSL-1.0
// Real temporary directories and small file helpers for tests that touch
// the host filesystem (O_DIRECT, io_uring, qemu-img/qemu-io interop).
//
// The base directory is $QED_TEST_TMPDIR (CTest sets it to
// <build>/test/tmp), else /tmp. Each tmp_dir is a fresh unique
// subdirectory, removed on destruction unless QED_TEST_KEEP is set.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace qed::test {

/// $QED_TEST_TMPDIR (created if missing) or /tmp.
inline std::string tmp_base() {
    const char* env = std::getenv("QED_TEST_TMPDIR");
    std::string base = env && *env ? env : "/tmp";
    std::error_code ec;
    std::filesystem::create_directories(base, ec);
    return base;
}

class tmp_dir {
public:
    /// `tag` becomes part of the directory name (letters, digits, '_' only).
    explicit tmp_dir(const std::string& tag = "qed") {
        std::string clean;
        for (char c : tag) clean += (std::isalnum(static_cast<unsigned char>(c)) || c == '_') ? c : '_';
        std::string templ = tmp_base() + "/" + clean + ".XXXXXX";
        std::vector<char> buf(templ.begin(), templ.end());
        buf.push_back('\0');
        if (!::mkdtemp(buf.data())) throw std::system_error(errno, std::generic_category(), "mkdtemp " + templ);
        path_ = buf.data();
    }
    ~tmp_dir() {
        if (std::getenv("QED_TEST_KEEP")) return;
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    tmp_dir(const tmp_dir&) = delete;
    tmp_dir& operator=(const tmp_dir&) = delete;

    const std::string& path() const noexcept { return path_; }
    /// Full path of `name` inside the directory.
    std::string operator/(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

/// Whole contents of a file (throws if it can't be opened).
inline std::vector<std::uint8_t> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw std::runtime_error("cannot open " + path);
    std::vector<std::uint8_t> out(static_cast<std::size_t>(in.tellg()));
    in.seekg(0);
    in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size()));
    if (!in) throw std::runtime_error("cannot read " + path);
    return out;
}

/// Bytes [offset, offset + n) of a file through plain pread (zeros past EOF).
inline std::vector<std::uint8_t> pread_file(const std::string& path, std::uint64_t offset, std::size_t n) {
    std::vector<std::uint8_t> out(n, 0);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "open " + path);
    std::size_t done = 0;
    while (done < n) {
        const ssize_t r = ::pread(fd, out.data() + done, n - done, static_cast<off_t>(offset + done));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        done += static_cast<std::size_t>(r);
    }
    ::close(fd);
    return out;
}

/// Write bytes at `offset` through plain pwrite (creates the file if needed).
inline void pwrite_file(const std::string& path, std::uint64_t offset, const void* data, std::size_t n) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "open " + path);
    const auto* p = static_cast<const std::uint8_t*>(data);
    std::size_t done = 0;
    while (done < n) {
        const ssize_t r = ::pwrite(fd, p + done, n - done, static_cast<off_t>(offset + done));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            ::close(fd);
            throw std::system_error(errno, std::generic_category(), "pwrite " + path);
        }
        done += static_cast<std::size_t>(r);
    }
    ::close(fd);
}

inline std::uint64_t file_size_of(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw std::system_error(errno, std::generic_category(), "stat " + path);
    return static_cast<std::uint64_t>(st.st_size);
}

inline void truncate_file(const std::string& path, std::uint64_t size) {
    if (::truncate(path.c_str(), static_cast<off_t>(size)) != 0)
        throw std::system_error(errno, std::generic_category(), "truncate " + path);
}

}  // namespace qed::test
