# Install rules: `cmake --install build --prefix P` puts
#   P/bin/modelgated, P/bin/modelgatectl
#   P/lib/libmodelgate.a
#   P/include/modelgate/{protocol,storage,actors}/*.hpp
#     (consumers get -IP/include/modelgate, so `#include "actors/modelgate.hpp"`
#      reads as it does inside this repository)
#   P/lib/cmake/modelgate/{modelgateConfig,modelgateConfigVersion,
#                          modelgateTargets*,FindCAF}.cmake
#   P/share/doc/modelgate/{README.md,modelgated.service}
# so that an outside project does
#   find_package(modelgate REQUIRED)
#   target_link_libraries(app PRIVATE modelgate::modelgate)
# (lib is lib/<multiarch> when P is /usr on Debian: GNUInstallDirs.)
#
# Included at the end of the top-level CMakeLists.txt, after the targets.
# Needs modelgate's include directory as
#   $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}> $<INSTALL_INTERFACE:include/modelgate>
# because install(EXPORT) rejects a plain source path.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(MODELGATE_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/modelgate"
    CACHE STRING "where modelgateConfig.cmake is installed, relative to the prefix")

install(TARGETS modelgated modelgatectl
        RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")

# The headers need C++17: say so in the exported target, so that a consumer
# gets -std=c++17 (or newer) without setting CMAKE_CXX_STANDARD itself.
target_compile_features(modelgate PUBLIC cxx_std_17)

# The library with its usage requirements (CAF::core, Boost::headers,
# SQLiteCpp, nlohmann_json, Threads, the BOOST_ASIO/BEAST_SEPARATE_COMPILATION
# and BOOST_ASIO_NO_DEPRECATED definitions) goes into modelgateTargets.cmake.
install(TARGETS modelgate EXPORT modelgateTargets
        ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
        LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}")

install(DIRECTORY "${PROJECT_SOURCE_DIR}/protocol" "${PROJECT_SOURCE_DIR}/storage"
                  "${PROJECT_SOURCE_DIR}/actors"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/modelgate"
        FILES_MATCHING PATTERN "*.hpp")

install(EXPORT modelgateTargets
        NAMESPACE modelgate::
        DESTINATION "${MODELGATE_INSTALL_CMAKEDIR}")

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/modelgateConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/modelgateConfig.cmake"
  INSTALL_DESTINATION "${MODELGATE_INSTALL_CMAKEDIR}")
# 0.x: a minor release may change the interface, so only the same minor matches.
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/modelgateConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY SameMinorVersion)
install(FILES
          "${PROJECT_BINARY_DIR}/modelgateConfig.cmake"
          "${PROJECT_BINARY_DIR}/modelgateConfigVersion.cmake"
          "${PROJECT_SOURCE_DIR}/cmake/FindCAF.cmake"   # Debian's CAF has no CMake config
        DESTINATION "${MODELGATE_INSTALL_CMAKEDIR}")

install(FILES "${PROJECT_SOURCE_DIR}/README.md" "${PROJECT_SOURCE_DIR}/tools/modelgated.service"
        DESTINATION "${CMAKE_INSTALL_DOCDIR}")
