// SPDX-License-Identifier: BSL-1.0
// An in-memory "filesystem" for tests: names -> memory_storage, served
// through the file_opener hook so backing files resolve as on disk.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "qed/image.hpp"

namespace qed::test {

class memory_fs {
public:
    explicit memory_fs(boost::asio::any_io_executor ex) : ex_(std::move(ex)) {}

    std::shared_ptr<memory_storage>& storage(const std::string& name) {
        auto& s = files_[name];
        if (!s) s = std::make_shared<memory_storage>();
        return s;
    }
    bool exists(const std::string& name) const { return files_.count(name) != 0; }

    /// Wrap every file it opens (fault injection, crash simulation...).
    std::function<std::shared_ptr<block_file>(std::shared_ptr<block_file>, const std::string&)> wrap;

    file_opener opener() {
        return
            [this](const std::string& path, const file_options& o, std::error_code& ec) -> std::shared_ptr<block_file> {
                auto it = files_.find(path);
                if (it == files_.end()) {
                    if (!o.create) {
                        ec = std::make_error_code(std::errc::no_such_file_or_directory);
                        return nullptr;
                    }
                    it = files_.emplace(path, std::make_shared<memory_storage>()).first;
                } else if (o.create) {
                    it->second->resize(0);
                }
                auto f = make_memory_file(ex_, it->second, o.read_only);
                return wrap ? wrap(std::move(f), path) : f;
            };
    }

private:
    boost::asio::any_io_executor ex_;
    std::map<std::string, std::shared_ptr<memory_storage>> files_;
};

}  // namespace qed::test
