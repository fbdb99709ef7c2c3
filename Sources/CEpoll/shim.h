// epoll for warmpool-loadgen's lean beat threads: Swift's Glibc module does not export it.
#include <sys/epoll.h>
