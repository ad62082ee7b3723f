# Every dependency comes from a Debian package (scripts/install-deps.sh installs them).
find_package(Threads REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(Boost 1.74 REQUIRED)  # header-only: Asio and Beast for the HTTP server
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(HIREDIS REQUIRED IMPORTED_TARGET hiredis)  # response cache L2, Redis Streams job store
find_package(SQLite3 REQUIRED)  # embedded job store
if(BW_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
