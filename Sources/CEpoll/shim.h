// epoll and eventfd for the controller's agent listener and warmpool-loadgen's lean beat threads:
// Swift's Glibc module does not export them.
#include <sys/epoll.h>
#include <sys/eventfd.h>
