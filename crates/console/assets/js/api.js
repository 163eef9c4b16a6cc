// The console's calls: POST /console/api/<Method> with the request message as JSON, and the
// bearer token from this tab's session storage. Never a cookie, never the URL.

const KEY = 'gateway-console-token';

export const session = {
  /** The token, or null when signed out; '' is "no token" (loopback development). */
  get token() { return sessionStorage.getItem(KEY); },
  set(token) { sessionStorage.setItem(KEY, token); },
  clear() { sessionStorage.removeItem(KEY); },
};

/** A refused call: the admin service's code, message and the field at fault. */
export class ApiError extends Error {
  constructor(body, status) {
    super(body.message || `HTTP ${status}`);
    this.code = body.code || 'UNKNOWN';
    this.field = body.field || null;
    this.status = status;
  }
}

async function post(path, body) {
  const headers = { 'Content-Type': 'application/json' };
  const token = session.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  let r;
  try {
    r = await fetch(path, {
      method: 'POST',
      headers,
      body: JSON.stringify(body ?? {}),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError({ code: 'UNAVAILABLE', message: `the node did not answer: ${e.message}` }, 0);
  }
  const data = await r.json().catch(() => ({ code: 'UNKNOWN', message: r.statusText }));
  if (!r.ok) throw new ApiError(data, r.status);
  return data;
}

/** Calls the admin RPC `method` (its proto name) with the request message `body`. */
export function call(method, body = {}) {
  return post(`api/${method}`, body);
}

/** This node's request counters for the instances the caller may see. */
export function traffic() {
  return post('live/traffic', {});
}

/** Every page of a paged read: `next` names the reply's cursor and the request's field. */
export async function all(method, body, items, cursor, next, maxPages = 50) {
  const out = [];
  let req = { ...body, limit: 1000 };
  for (let i = 0; i < maxPages; i++) {
    const page = await call(method, req);
    out.push(...(page[items] || []));
    const c = page[cursor];
    if (c === null || c === undefined) break;
    req = { ...req, [next]: c };
  }
  return out;
}
