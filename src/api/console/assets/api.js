// The console's only way to the server: same-origin JSON requests with the bearer token.
//
// The token arrives either typed into the login form or in the address bar's fragment
// (`/console#token=…`, which browsers never send to a server). It is kept in this tab's
// sessionStorage, sent only in the Authorization header, and never written into a URL,
// the page or the browser console.

const STORAGE_KEY = 'event-manager.console.token';

/** Takes `token` out of the fragment, removing it from the address bar and history entry. */
export function takeTokenFromFragment() {
  const fragment = window.location.hash.replace(/^#/, '');
  if (!fragment) return null;
  const params = new URLSearchParams(fragment);
  const token = params.get('token');
  if (token === null) return null;
  params.delete('token');
  const rest = params.toString();
  const url = window.location.pathname + window.location.search + (rest ? `#${rest}` : '');
  window.history.replaceState(window.history.state, '', url);
  return token.trim() || null;
}

export const session = {
  token() {
    return window.sessionStorage.getItem(STORAGE_KEY);
  },
  set(token) {
    window.sessionStorage.setItem(STORAGE_KEY, token);
  },
  clear() {
    window.sessionStorage.removeItem(STORAGE_KEY);
  },
};

/** A request that failed: the HTTP status and the API's error message, if it sent one. */
export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.error ? body.error : null;
    const invalid = detail && Array.isArray(detail.invalid)
      ? detail.invalid.map((p) => `${p.parameter}: ${p.rule}`).join('; ')
      : '';
    const message = detail ? detail.message : `the server answered ${status}`;
    super(invalid ? `${message} (${invalid})` : message);
    this.status = status;
  }

  /** The token is missing, invalid, expired or lacks the scope. */
  get isAuthentication() {
    return this.status === 401 || this.status === 403;
  }
}

/** GET `path` with `params` (entries with empty values left out); the parsed JSON body. */
export async function getJson(path, params = {}) {
  const token = session.token();
  if (!token) throw new ApiError(401, null);
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') {
      url.searchParams.set(name, String(value));
    }
  }
  let response;
  try {
    response = await fetch(url, {
      headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (e) {
    throw new ApiError(0, { error: { message: 'the server cannot be reached' } });
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}
