# BW_CUDA=AUTO compiles the CUDA backend whenever nvcc is found, even on machines without a
# GPU, so CI proves the CUDA sources build. The binary then reports "no CUDA device" at run time.
set(BW_HAVE_CUDA OFF)
if(NOT BW_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # Hopper's wgmma (the prefill attention kernel) exists only in sm_90a code, which
    # runs on compute capability 9.0 alone: "90" becomes sm_90a machine code plus portable
    # compute_90 PTX (what later GPUs JIT; the kernels then take their sm_80 paths).
    set(bw_cuda_archs "")
    foreach(arch IN LISTS BW_CUDA_ARCHS)
      if(arch STREQUAL "90")
        list(APPEND bw_cuda_archs 90a-real 90-virtual)
      else()
        list(APPEND bw_cuda_archs ${arch})
      endif()
    endforeach()
    set(CMAKE_CUDA_ARCHITECTURES ${bw_cuda_archs})
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    # CMake 3.25 does not know nvcc 13 speaks C++20; device code keeps to C++17.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(BW_HAVE_CUDA ON)
  elseif(BW_CUDA STREQUAL "ON")
    message(FATAL_ERROR "BW_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
endif()
message(STATUS "Breakwater CUDA backend: ${BW_HAVE_CUDA}")
