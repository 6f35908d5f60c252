// SPDX-License-Identifier: BSL-1.0
// Helpers for the tools' tests (test_tools_*.cpp): run qed-img, qed-io,
// qemu-img and qemu-io as child processes with a time limit, capture their
// output, and work in a scratch directory.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace qed::tools_test {

namespace fs = std::filesystem;

/// What a finished child process left.
struct result {
    int status = -1;         ///< exit status (valid when `exited`)
    bool exited = false;     ///< ended with exit(), not a signal
    bool timed_out = false;  ///< killed after the time limit
    long max_rss_kib = 0;    ///< the child's peak resident set (getrusage ru_maxrss)
    double seconds = 0;      ///< wall-clock time it ran
    std::string out, err;

    /// Standard output without qemu-io's timing lines (they hold speeds).
    std::string out_without_timing() const {
        std::istringstream in(out);
        std::string line, kept;
        while (std::getline(in, line))
            if (line.find(" ops; ") == std::string::npos) kept += line + "\n";
        return kept;
    }
    std::vector<std::string> err_lines() const { return lines(err); }
    std::vector<std::string> out_lines() const { return lines(out); }

    static std::vector<std::string> lines(const std::string& text) {
        std::vector<std::string> v;
        std::istringstream in(text);
        for (std::string l; std::getline(in, l);) v.push_back(l);
        return v;
    }
};

inline std::ostream& operator<<(std::ostream& os, const result& r) {
    return os << "{status " << r.status << (r.exited ? "" : " (signal)") << (r.timed_out ? " (timed out)" : "")
              << ", out: " << r.out << ", err: " << r.err << "}";
}

/// Run `argv` (argv[0] found on PATH unless it has a slash) in `cwd`, with
/// `input` on standard input; killed after `limit`.
inline result run(const std::vector<std::string>& argv, const std::string& cwd = {}, const std::string& input = {},
                  std::chrono::seconds limit = std::chrono::seconds(60)) {
    int in_pipe[2], out_pipe[2], err_pipe[2];
    if (::pipe(in_pipe) || ::pipe(out_pipe) || ::pipe(err_pipe)) throw std::runtime_error("pipe failed");
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
        ::dup2(in_pipe[0], 0);
        ::dup2(out_pipe[1], 1);
        ::dup2(err_pipe[1], 2);
        for (int fd : {in_pipe[0], in_pipe[1], out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) ::close(fd);
        if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) ::_exit(126);
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execvp(args[0], args.data());
        ::_exit(127);
    }
    ::close(in_pipe[0]);
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
    // Small inputs fit in the pipe buffer; write and close so the child sees EOF.
    if (!input.empty()) {
        const ssize_t n = ::write(in_pipe[1], input.data(), input.size());
        (void)n;
    }
    ::close(in_pipe[1]);

    result r;
    const auto started = std::chrono::steady_clock::now();
    const auto deadline = started + limit;
    pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
    int open_fds = 2;
    char buf[65536];
    while (open_fds > 0) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
        if (left <= 0) {
            r.timed_out = true;
            ::kill(pid, SIGKILL);
            break;
        }
        if (::poll(fds, 2, static_cast<int>(left)) < 0 && errno != EINTR) break;
        for (int k = 0; k < 2; ++k) {
            if (fds[k].fd < 0 || !(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            const ssize_t n = ::read(fds[k].fd, buf, sizeof buf);
            if (n > 0) {
                (k == 0 ? r.out : r.err).append(buf, static_cast<std::size_t>(n));
            } else {
                ::close(fds[k].fd);
                fds[k].fd = -1;
                --open_fds;
            }
        }
    }
    for (auto& f : fds)
        if (f.fd >= 0) ::close(f.fd);
    int status = 0;
    struct rusage usage {};
    ::wait4(pid, &status, 0, &usage);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    r.max_rss_kib = usage.ru_maxrss;
    r.exited = WIFEXITED(status);
    r.status = r.exited ? WEXITSTATUS(status) : -1;
    return r;
}

/// Where the tools were built: given by CMake, else next to this test binary.
inline std::string tool_path(const char* name, const char* configured) {
    if (configured && *configured && fs::exists(configured)) return configured;
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    const fs::path guess = self.parent_path().parent_path() / "src" / "tools" / name;
    if (!ec && fs::exists(guess)) return guess.string();
    throw std::runtime_error(std::string("cannot find ") + name + " (build the qed-img and qed-io targets)");
}

#ifndef QED_IMG_PATH
#define QED_IMG_PATH ""
#endif
#ifndef QED_IO_PATH
#define QED_IO_PATH ""
#endif

inline const std::string& qed_img_path() {
    static const std::string p = tool_path("qed-img", QED_IMG_PATH);
    return p;
}
inline const std::string& qed_io_path() {
    static const std::string p = tool_path("qed-io", QED_IO_PATH);
    return p;
}

/// True when qemu-img and qemu-io can be run (the interop tests need them).
inline bool have_qemu() {
    static const bool ok = run({"qemu-img", "--version"}).status == 0 && run({"qemu-io", "--version"}).status == 0;
    return ok;
}

struct qemu_available {
    boost::test_tools::assertion_result operator()(boost::unit_test::test_unit_id) const {
        boost::test_tools::assertion_result r(have_qemu());
        if (!r) r.message() << "qemu-img/qemu-io not installed (Debian: qemu-utils)";
        return r;
    }
};

/// A fresh scratch directory per test, removed afterwards.
struct scratch {
    fs::path dir;

    scratch() {
        const char* base = std::getenv("QED_TEST_TMPDIR");
        fs::path root = base && *base ? fs::path(base) : fs::temp_directory_path();
        fs::create_directories(root);
        std::string tmpl = (root / "tools-XXXXXX").string();
        if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed in " + root.string());
        dir = tmpl;
    }
    ~scratch() {
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
    scratch(const scratch&) = delete;
    scratch& operator=(const scratch&) = delete;

    std::string path(const std::string& name) const { return (dir / name).string(); }

    /// Run a tool with the scratch directory as working directory.
    result img(std::vector<std::string> args) const { return tool(qed_img_path(), std::move(args)); }
    result io(std::vector<std::string> args, const std::string& input = {}) const {
        return tool(qed_io_path(), std::move(args), input);
    }
    result qemu_img(std::vector<std::string> args) const { return tool("qemu-img", std::move(args)); }
    result qemu_io(std::vector<std::string> args, const std::string& input = {}) const {
        return tool("qemu-io", std::move(args), input);
    }

    /// Run qemu-img and require success (for building fixtures).
    void must_qemu_img(std::vector<std::string> args) const {
        const result r = qemu_img(args);
        BOOST_REQUIRE_MESSAGE(r.exited && r.status == 0, "qemu-img failed: " << r);
    }
    /// Run qemu-io -f FMT with the -c commands and require success.
    void must_qemu_io(const std::string& file, const std::vector<std::string>& cmds,
                      const std::string& fmt = "qed") const {
        std::vector<std::string> args{"-f", fmt};
        for (const auto& c : cmds) {
            args.push_back("-c");
            args.push_back(c);
        }
        args.push_back(file);
        const result r = qemu_io(args);
        BOOST_REQUIRE_MESSAGE(r.exited && r.status == 0, "qemu-io failed: " << r);
    }

    std::string read_file(const std::string& name) const {
        std::ifstream in(path(name), std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    bool exists(const std::string& name) const { return fs::exists(path(name)); }
    void copy(const std::string& from, const std::string& to) const {
        fs::copy_file(path(from), path(to), fs::copy_options::overwrite_existing);
    }
    /// Overwrite bytes of a file in place.
    void poke(const std::string& name, std::uint64_t offset, const std::string& bytes) const {
        std::fstream f(path(name), std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(static_cast<std::streamoff>(offset));
        f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    void resize(const std::string& name, std::uint64_t size) const { fs::resize_file(path(name), size); }

private:
    result tool(const std::string& exe, std::vector<std::string> args, const std::string& input = {}) const {
        args.insert(args.begin(), exe);
        return run(args, dir.string(), input);
    }
};

/// Little-endian bytes of a 64-bit value (for patching tables).
inline std::string le64(std::uint64_t v) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
    return s;
}

}  // namespace qed::tools_test
