// SPDX-License-Identifier: BSL-1.0
// Running qemu-img / qemu-io from tests, and parsing what they print.
//
// Commands run through /bin/sh (popen) with stderr folded into stdout;
// callers quote every path with shell_quote().
#pragma once

#include <sys/wait.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace qed::test {

struct command_result {
    int exit_code = -1;  ///< exit status, or -1 if the command did not exit normally
    std::string output;  ///< stdout and stderr
};

/// Single-quote a string for /bin/sh.
inline std::string shell_quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\'')
            out += "'\\''";
        else
            out += c;
    }
    return out + "'";
}

/// Run `cmd` with /bin/sh, capturing stdout and stderr.
inline command_result run_command(const std::string& cmd) {
    command_result r;
    FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
    if (!p) throw std::runtime_error("popen failed: " + cmd);
    char buf[4096];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
    const int status = ::pclose(p);
    if (status != -1 && WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
    return r;
}

/// True when qemu-img and qemu-io can be run.
inline bool qemu_available() {
    static const bool ok = run_command("qemu-img --version && qemu-io --version").exit_code == 0;
    return ok;
}

/// "cd DIR && qemu-img ARGS" (relative backing names resolve as on the command line).
inline command_result qemu_img(const std::string& dir, const std::string& args) {
    return run_command("cd " + shell_quote(dir) + " && qemu-img " + args);
}

/// qemu-io -f FMT with one -c per command.
inline command_result qemu_io(const std::string& dir, const std::string& image, const std::vector<std::string>& cmds,
                              const std::string& fmt = "qed") {
    std::string c = "cd " + shell_quote(dir) + " && qemu-io -f " + fmt;
    for (const auto& x : cmds) c += " -c " + shell_quote(x);
    c += " " + shell_quote(image);
    return run_command(c);
}

/// One object of `qemu-img map --output=json`.
struct qemu_extent {
    std::uint64_t start = 0;
    std::uint64_t length = 0;
    unsigned depth = 0;
    bool present = false;
    bool zero = false;
    bool data = false;
    std::optional<std::uint64_t> offset;
};

namespace detail_qemu {

inline std::optional<std::string> field(const std::string& obj, const std::string& name) {
    const std::string key = "\"" + name + "\":";
    auto at = obj.find(key);
    if (at == std::string::npos) return std::nullopt;
    at += key.size();
    while (at < obj.size() && obj[at] == ' ') ++at;
    auto end = at;
    while (end < obj.size() && obj[end] != ',' && obj[end] != '}' && obj[end] != '\n') ++end;
    return obj.substr(at, end - at);
}

inline std::uint64_t number(const std::string& obj, const std::string& name) {
    auto v = field(obj, name);
    if (!v) throw std::runtime_error("qemu-img map: no field " + name + " in " + obj);
    return std::stoull(*v);
}

inline bool boolean(const std::string& obj, const std::string& name) {
    auto v = field(obj, name);
    if (!v) throw std::runtime_error("qemu-img map: no field " + name + " in " + obj);
    return v->rfind("true", 0) == 0;
}

}  // namespace detail_qemu

/// Parse the output of `qemu-img map --output=json` (one object per extent).
inline std::vector<qemu_extent> parse_qemu_map(const std::string& json) {
    std::vector<qemu_extent> out;
    std::size_t pos = 0;
    while ((pos = json.find('{', pos)) != std::string::npos) {
        const auto end = json.find('}', pos);
        if (end == std::string::npos) break;
        const std::string obj = json.substr(pos, end - pos + 1);
        qemu_extent e;
        e.start = detail_qemu::number(obj, "start");
        e.length = detail_qemu::number(obj, "length");
        e.depth = static_cast<unsigned>(detail_qemu::number(obj, "depth"));
        e.present = detail_qemu::boolean(obj, "present");
        e.zero = detail_qemu::boolean(obj, "zero");
        e.data = detail_qemu::boolean(obj, "data");
        if (auto off = detail_qemu::field(obj, "offset")) e.offset = std::stoull(*off);
        out.push_back(e);
        pos = end + 1;
    }
    return out;
}

/// Integer field of `qemu-img check --output=json` (absent fields are 0, as
/// qemu-img omits zero corruption/leak counts).
inline std::uint64_t check_json_field(const std::string& json, const std::string& name) {
    auto v = detail_qemu::field(json, name);
    return v ? std::stoull(*v) : 0;
}

}  // namespace qed::test
