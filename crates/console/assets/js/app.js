// The console's shell: sign-in, who is signed in, and the page for the location's hash
// (#cluster, #instances/NAME, #groups/NAME, #accounts/NAME).

import { ApiError, call, session } from './api.js';
import { h } from './ui.js';
import * as cluster from './cluster.js';
import * as instances from './instances.js';
import * as groups from './groups.js';
import * as accounts from './accounts.js';

const pages = { cluster, instances, groups, accounts };
const ctx = { role: null, account: null };
let cleanup = null;
let rendering = 0;

/** Who the token is: the operator may describe the cluster; an account token may not. */
async function whoAmI() {
  try {
    await call('DescribeCluster');
    return { role: 'operator', account: null };
  } catch (e) {
    if (!(e instanceof ApiError) || e.code !== 'PERMISSION_DENIED') throw e;
  }
  const { accounts: mine } = await call('DescribeAccounts', {});
  return { role: 'account', account: mine.length ? mine[0].name : null };
}

function showSignIn(message) {
  document.getElementById('sign-in').hidden = false;
  document.getElementById('nav').hidden = true;
  document.getElementById('who').hidden = true;
  document.getElementById('page').replaceChildren();
  document.getElementById('sign-in-error').textContent = message || '';
  document.getElementById('token').focus();
}

async function signedIn() {
  Object.assign(ctx, await whoAmI());
  document.getElementById('sign-in').hidden = true;
  document.getElementById('nav').hidden = false;
  document.getElementById('who').hidden = false;
  document.getElementById('who-name').textContent =
    ctx.role === 'operator' ? 'Signed in as the operator' : `Signed in as account ${ctx.account}`;
  for (const a of document.querySelectorAll('#nav a[data-role="operator"]')) {
    a.parentElement.hidden = ctx.role !== 'operator';
  }
  if (!location.hash) location.hash = ctx.role === 'operator' ? '#cluster' : '#instances';
  else route();
}

async function route() {
  if (session.token === null || !ctx.role) return;
  const [name, item] = location.hash.slice(1).split('/').map(decodeURIComponent);
  const page = pages[name] || (ctx.role === 'operator' ? cluster : instances);
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === `#${name}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (cleanup) cleanup();
  cleanup = null;
  const mine = ++rendering;
  const root = h('section', { id: `page-${name || 'home'}`, 'aria-live': 'off' });
  document.getElementById('page').replaceChildren(root);
  try {
    const done = await page.render(root, ctx, item || null);
    if (mine === rendering) cleanup = done || null;
    else if (done) done();
  } catch (e) {
    if (e instanceof ApiError && e.code === 'UNAUTHENTICATED') {
      session.clear();
      showSignIn(e.message);
      return;
    }
    root.append(h('p', { class: 'warning bad', role: 'alert' }, `${e.code || 'ERROR'}: ${e.message}`));
  }
}

document.getElementById('sign-in-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = document.getElementById('token');
  session.set(input.value.trim());
  input.value = '';
  try {
    await signedIn();
  } catch (e) {
    session.clear();
    showSignIn(`${e.code || 'ERROR'}: ${e.message}`);
  }
});

document.getElementById('sign-out').addEventListener('click', () => {
  session.clear();
  ctx.role = null;
  if (cleanup) cleanup();
  cleanup = null;
  history.replaceState(null, '', location.pathname);
  showSignIn('');
});

window.addEventListener('hashchange', route);

if (session.token === null) showSignIn('');
else signedIn().catch((e) => { session.clear(); showSignIn(`${e.code || 'ERROR'}: ${e.message}`); });
