"""The few Cryptoki calls python-pkcs11 does not expose, through ctypes.

python-pkcs11 0.10 initialises every module with ``C_Initialize(NULL)``.
PKCS#11 v2.40 section 5.4 says a NULL argument means "the application will not
access Cryptoki from multiple threads simultaneously", and SoftHSM takes it at
its word: it disables its internal mutexes (``MutexFactory::disable()``), so two
threads signing at once race inside the object store and handle manager. That
is the ``CKR_GENERAL_ERROR`` from ``C_SignInit`` (and, under more threads, a
segmentation fault) seen with one session per thread. The fix is to initialise
with ``CKF_OS_LOCKING_OK``, which tells the library to use native locks.

We do that by finalising right after python-pkcs11's own initialisation, before
any session exists, and initialising again with the locking flag through the
same function list (``dlopen`` of the same path returns the same library, so
python-pkcs11 keeps working on the re-initialised state).

Token and PIN initialisation (``C_InitToken``, ``C_InitPIN``) are also here:
they let ``idmint init`` create a SoftHSM token without passing PINs on the
command line of ``softhsm2-util`` (argv is world-readable in /proc).
"""

from __future__ import annotations

import ctypes
import threading

from idmint.hsm.errors import CryptokiError

CKR_OK = 0x0
CKR_CANT_LOCK = 0x0A
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKF_OS_LOCKING_OK = 0x2
CKF_SERIAL_SESSION = 0x4
CKF_RW_SESSION = 0x2
CKU_SO = 0
CKU_USER = 1

_ULONG = ctypes.c_ulong
_RV = ctypes.c_ulong


class _Version(ctypes.Structure):
    _fields_ = (("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte))


class _InitArgs(ctypes.Structure):
    # CK_C_INITIALIZE_ARGS: four mutex callbacks, flags, reserved.
    _fields_ = (
        ("create_mutex", ctypes.c_void_p),
        ("destroy_mutex", ctypes.c_void_p),
        ("lock_mutex", ctypes.c_void_p),
        ("unlock_mutex", ctypes.c_void_p),
        ("flags", _ULONG),
        ("reserved", ctypes.c_void_p),
    )


_PTR = ctypes.c_void_p
_F_PTR = ctypes.CFUNCTYPE(_RV, _PTR)
_F_INIT_TOKEN = ctypes.CFUNCTYPE(_RV, _ULONG, ctypes.c_char_p, _ULONG, ctypes.c_char_p)
_F_INIT_PIN = ctypes.CFUNCTYPE(_RV, _ULONG, ctypes.c_char_p, _ULONG)
_F_OPEN_SESSION = ctypes.CFUNCTYPE(_RV, _ULONG, _ULONG, _PTR, _PTR, ctypes.POINTER(_ULONG))
_F_ULONG = ctypes.CFUNCTYPE(_RV, _ULONG)
_F_LOGIN = ctypes.CFUNCTYPE(_RV, _ULONG, _ULONG, ctypes.c_char_p, _ULONG)
_F_UNUSED = ctypes.c_void_p


class _FunctionList(ctypes.Structure):
    # CK_FUNCTION_LIST up to C_Logout, in the order fixed by the standard.
    _fields_ = (
        ("version", _Version),
        ("C_Initialize", _F_PTR),
        ("C_Finalize", _F_PTR),
        ("C_GetInfo", _F_UNUSED),
        ("C_GetFunctionList", _F_UNUSED),
        ("C_GetSlotList", _F_UNUSED),
        ("C_GetSlotInfo", _F_UNUSED),
        ("C_GetTokenInfo", _F_UNUSED),
        ("C_GetMechanismList", _F_UNUSED),
        ("C_GetMechanismInfo", _F_UNUSED),
        ("C_InitToken", _F_INIT_TOKEN),
        ("C_InitPIN", _F_INIT_PIN),
        ("C_SetPIN", _F_UNUSED),
        ("C_OpenSession", _F_OPEN_SESSION),
        ("C_CloseSession", _F_ULONG),
        ("C_CloseAllSessions", _F_ULONG),
        ("C_GetSessionInfo", _F_UNUSED),
        ("C_GetOperationState", _F_UNUSED),
        ("C_SetOperationState", _F_UNUSED),
        ("C_Login", _F_LOGIN),
        ("C_Logout", _F_ULONG),
    )


_lock = threading.Lock()
_functions: dict[str, _FunctionList] = {}


def _function_list(module_path: str) -> _FunctionList:
    with _lock:
        found = _functions.get(module_path)
        if found is None:
            library = ctypes.CDLL(module_path)
            pointer = ctypes.POINTER(_FunctionList)()
            rv = library.C_GetFunctionList(ctypes.byref(pointer))
            if rv != CKR_OK:
                raise CryptokiError("C_GetFunctionList", rv)
            found = pointer.contents
            # Keep the library handle alive as long as the function list.
            _functions[module_path] = found
            _libraries.append(library)
        return found


_libraries: list[ctypes.CDLL] = []


def _check(function: str, rv: int) -> None:
    if rv != CKR_OK:
        raise CryptokiError(function, rv)


def reinitialize_with_os_locking(module_path: str) -> bool:
    """Finalize the module and initialize it again with ``CKF_OS_LOCKING_OK``.

    Must run before any session is opened. Returns False when the module
    cannot use OS locking (``CKR_CANT_LOCK``); it is then initialised without
    arguments again and the caller must serialise every call itself.
    """
    functions = _function_list(module_path)
    rv = functions.C_Finalize(None)
    if rv not in (CKR_OK, CKR_CRYPTOKI_NOT_INITIALIZED):
        raise CryptokiError("C_Finalize", rv)
    args = _InitArgs(flags=CKF_OS_LOCKING_OK)
    rv = functions.C_Initialize(ctypes.cast(ctypes.pointer(args), ctypes.c_void_p))
    if rv == CKR_CANT_LOCK:
        _check("C_Initialize", functions.C_Initialize(None))
        return False
    _check("C_Initialize", rv)
    return True


def _padded_label(label: str) -> bytes:
    raw = label.encode("utf-8")
    if len(raw) > 32:
        raise ValueError(f"token label {label!r} is longer than 32 bytes")
    return raw.ljust(32, b" ")


def init_token(module_path: str, slot_id: int, label: str, so_pin: str, user_pin: str) -> None:
    """Initialise the token in ``slot_id`` and set its user PIN."""
    functions = _function_list(module_path)
    so = so_pin.encode("utf-8")
    user = user_pin.encode("utf-8")
    _check("C_InitToken", functions.C_InitToken(slot_id, so, len(so), _padded_label(label)))
    handle = _ULONG()
    _check(
        "C_OpenSession",
        functions.C_OpenSession(
            slot_id, CKF_SERIAL_SESSION | CKF_RW_SESSION, None, None, ctypes.byref(handle)
        ),
    )
    try:
        _check("C_Login", functions.C_Login(handle.value, CKU_SO, so, len(so)))
        try:
            _check("C_InitPIN", functions.C_InitPIN(handle.value, user, len(user)))
        finally:
            functions.C_Logout(handle.value)
    finally:
        functions.C_CloseSession(handle.value)


def close_all_sessions(module_path: str, slot_id: int) -> None:
    """Close every session of this application on ``slot_id``.

    Used by tests to simulate an HSM that dropped our sessions (as a YubiHSM2
    does after 30 s idle, or a network HSM after a failover).
    """
    _check("C_CloseAllSessions", _function_list(module_path).C_CloseAllSessions(slot_id))


def logout(module_path: str, slot_id: int) -> None:
    """Log this application out of the token (its sessions stay open)."""
    functions = _function_list(module_path)
    handle = _ULONG()
    _check(
        "C_OpenSession",
        functions.C_OpenSession(slot_id, CKF_SERIAL_SESSION, None, None, ctypes.byref(handle)),
    )
    try:
        _check("C_Logout", functions.C_Logout(handle.value))
    finally:
        functions.C_CloseSession(handle.value)


def login(module_path: str, session_handle: int, pin: str) -> None:
    """``C_Login`` as the normal user on an already open session.

    Login state is per application and token, not per session (PKCS#11 v2.40
    section 5.6), so one login serves every session of the pool. We log in
    here rather than through python-pkcs11's ``Token.open(user_pin=...)``
    because python-pkcs11 calls ``C_Logout`` when such a session is closed,
    which would silently log out every other session too. An existing login
    (``CKR_USER_ALREADY_LOGGED_IN``) is success.
    """
    raw = pin.encode("utf-8")
    rv = _function_list(module_path).C_Login(session_handle, CKU_USER, raw, len(raw))
    if rv not in (CKR_OK, CKR_USER_ALREADY_LOGGED_IN):
        raise CryptokiError("C_Login", rv)
