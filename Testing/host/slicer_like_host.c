/* A Slicer-like host for Python: it keeps the GIL while its event loop idles and calls Python only on timer ticks,
 * as 3D Slicer's Qt event loop does with PythonQt. A Python thread in such a host runs only during those calls.
 *
 * usage: slicer_like_host PYTHON DRIVER_DIR MODE IDLE_MS TIMEOUT_S
 *   PYTHON      the interpreter whose environment (venv) the embedded Python uses
 *   DRIVER_DIR  folder holding slicer_host_driver.py
 *   MODE        passed to driver.prepare(MODE)
 * The driver's prepare(mode) runs first, then start(), which returns a hold in milliseconds: the host first sleeps that
 * long holding the GIL without calling Python at all. Then, until poll() returns True or TIMEOUT_S passes, it sleeps
 * IDLE_MS holding the GIL and calls poll(). Finally report(finished) prints the figures. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {
    }
}

static PyObject *call(PyObject *module, const char *name, PyObject *args) {
    PyObject *function = PyObject_GetAttrString(module, name);
    PyObject *result = function ? PyObject_CallObject(function, args) : NULL;
    Py_XDECREF(function);
    if (result == NULL) {
        PyErr_Print();
        exit(3);
    }
    return result;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s PYTHON DRIVER_DIR MODE IDLE_MS TIMEOUT_S\n", argv[0]);
        return 2;
    }
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    PyConfig_SetBytesString(&config, &config.program_name, argv[1]); /* finds the venv beside it */
    PyStatus status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        Py_ExitStatusException(status);
    }
    PyObject *sys_path = PySys_GetObject("path");
    PyObject *folder = PyUnicode_DecodeFSDefault(argv[2]);
    PyList_Insert(sys_path, 0, folder);
    Py_DECREF(folder);
    PyObject *driver = PyImport_ImportModule("slicer_host_driver");
    if (driver == NULL) {
        PyErr_Print();
        return 3;
    }
    Py_DECREF(call(driver, "prepare", Py_BuildValue("(s)", argv[3])));
    double end = now_s() + atof(argv[5]);
    PyObject *hold = call(driver, "start", NULL);
    long hold_ms = PyLong_AsLong(hold);
    Py_DECREF(hold);
    sleep_ms(hold_ms); /* a long stretch in C (a modal dialog, a render): no Python runs in this process */
    long idle_ms = atol(argv[4]);
    int finished = 0;
    while (!finished && now_s() < end) {
        sleep_ms(idle_ms); /* the event loop idles: the GIL stays with this thread */
        PyObject *done = call(driver, "poll", NULL);
        finished = PyObject_IsTrue(done);
        Py_DECREF(done);
    }
    Py_DECREF(call(driver, "report", Py_BuildValue("(i)", finished)));
    Py_DECREF(driver);
    Py_Finalize();
    return finished ? 0 : 1;
}
