// Groups and APIs: create and edit groups, create APIs, deploy and abolish them per stage,
// IP access control, app grants and throttling policies.

import { call } from './api.js';
import { badge, confirm, failure, form, h, num, status, table, time } from './ui.js';

const STAGES = ['RELEASE', 'PRE', 'TEST'];
const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'ANY'];
const lines = (v) => v.split(/[\s,]+/).filter(Boolean);

/** `URL[@WEIGHT]` items, one a line, as the admin API's backends (the server checks them). */
const backendsOf = (text) => lines(text).map((item) => {
  const at = item.lastIndexOf('@');
  if (at > 0 && /^\d+$/.test(item.slice(at + 1))) return { url: item.slice(0, at), weight: Number(item.slice(at + 1)) };
  return { url: item };
});
/** An API's backends in that form, one a line (weight 1 left out). */
const backendsText = (d) => (d.backends && d.backends.length ? d.backends : [{ url: d.backend }])
  .map((b) => (b.weight && b.weight !== 1 ? `${b.url}@${b.weight}` : b.url)).join('\n');

export async function render(root, ctx, selected) {
  root.append(h('h2', {}, 'Groups and APIs'));
  const [{ groups }, { instances }] = await Promise.all([
    call('DescribeApiGroups', {}), call('DescribeInstances', {})]);
  const instanceOptions = [['shared', 'shared'], ...instances.map((i) => [i.name, `${i.name} (${i.spec})`])];
  const ips = (g) => [g.ip_allow.length ? `allow ${g.ip_allow.join(', ')}` : '', g.ip_deny.length ? `deny ${g.ip_deny.join(', ')}` : '']
    .filter(Boolean).join('; ');
  root.append(table('API groups', ['Name', 'Account', 'Instance', 'Host', 'Base path', 'APIs', 'Deployed', 'IP access'],
    groups.map((g) => ({
      attrs: { 'data-group': g.name, 'aria-selected': String(g.name === selected) },
      cells: [h('a', { href: `#groups/${encodeURIComponent(g.name)}` }, g.name), g.account, g.instance, g.host || '', g.base_path || '',
        String(g.apis.length), g.deployments.map((d) => `${d.api}@${d.stage}`).join(', '), ips(g) || 'anyone'],
    })), { id: 'groups' }));

  const group = groups.find((g) => g.name === selected);
  if (group) await detail(root, ctx, group, instanceOptions);

  const fields = [
    { name: 'name', label: 'Name', required: true },
    { name: 'instance', label: 'Instance', type: 'select', options: instanceOptions },
    { name: 'host', label: 'Host', hint: 'Optional: requests for this host name.' },
    { name: 'base_path', label: 'Base path', hint: 'Optional, such as /shop.' },
  ];
  if (ctx.role === 'operator') fields.push({ name: 'account', label: 'Account', hint: 'Empty: the default account.' });
  root.append(form({
    id: 'create-group', legend: 'Create a group', submit: 'Create group', fields,
    onSubmit: async (v) => {
      const { group: g } = await call('CreateApiGroup', {
        name: v.name, instance: v.instance, host: v.host || null, base_path: v.base_path || null, account: v.account || '',
      });
      status(`Group ${g.name} created.`);
      location.hash = `#groups/${encodeURIComponent(g.name)}`;
    },
  }));
}

function reload() {
  window.dispatchEvent(new HashChangeEvent('hashchange'));
}

async function detail(root, ctx, g, instanceOptions) {
  const section = h('section', { class: 'card', id: 'group-detail', 'aria-labelledby': 'group-title' });
  section.append(h('h3', { id: 'group-title' }, `Group ${g.name}`));
  root.append(section);
  const [{ apis }, apps, policies] = await Promise.all([
    call('DescribeApis', { group: g.name }),
    call('DescribeApps', {}).then((r) => r.apps).catch(() => []),
    call('DescribeTrafficControls', {}).then((r) => r.policies).catch(() => []),
  ]);

  // The APIs, with buttons per stage: deploy where it is not deployed; where it is, deploy
  // again (the definition as it is now replaces the deployed one) or abolish.
  const stageButton = (a, stage, action) => h('button', {
    type: 'button', id: `${action}-${a.name}-${stage}`, class: action === 'abolish' ? 'danger' : '',
    onclick: async (ev) => {
      ev.target.disabled = true;
      try {
        if (action === 'abolish') await call('AbolishApi', { group: g.name, name: a.name, stage });
        else await call('DeployApi', { group: g.name, name: a.name, stage });
        status(`${a.name} ${action === 'abolish' ? 'abolished from' : 'deployed to'} ${stage}.`);
        reload();
      } catch (e) {
        status(`${e.code}: ${e.message}`);
        ev.target.disabled = false;
      }
    },
  }, `${{ deploy: 'Deploy', redeploy: 'Deploy again to', abolish: 'Abolish' }[action]} ${stage}`);
  const apiRows = apis.map((a) => {
    const d = a.definition || {};
    const buttons = STAGES.flatMap((stage) => (a.deployed_stages.includes(stage)
      ? [stageButton(a, stage, 'redeploy'), stageButton(a, stage, 'abolish')]
      : [stageButton(a, stage, 'deploy')]));
    const edit = h('button', {
      type: 'button', id: `edit-${a.name}`,
      onclick: () => editApi(editSlot, g, a),
    }, 'Edit');
    const del = h('button', {
      type: 'button', class: 'danger',
      onclick: async () => {
        if (!await confirm(`Delete API ${a.name} of ${g.name}?`, 'Delete')) return;
        try { await call('DeleteApi', { group: g.name, name: a.name }); reload(); } catch (e) { status(`${e.code}: ${e.message}`); }
      },
    }, 'Delete');
    return {
      attrs: { 'data-api': a.name },
      cells: [a.name, d.method, d.path, h('span', { class: 'wrap' }, backendsText(d).split('\n').join(', ')),
        d.auth_type || 'ANONYMOUS', a.deployed_stages.map((s) => badge(s)), h('span', {}, buttons, edit, del)],
    };
  });
  section.append(table('APIs', ['Name', 'Method', 'Path', 'Backends', 'Auth', 'Deployed', 'Actions'], apiRows, { id: 'apis' }));
  // Where an API's edit form opens.
  const editSlot = h('div', { id: 'edit-slot' });
  section.append(editSlot);

  const grid = h('div', { class: 'grid' });
  section.append(grid);
  grid.append(form({
    id: 'create-api', legend: 'Create an API', submit: 'Create API',
    aliases: { backends: 'backend' },
    fields: [
      { name: 'name', label: 'Name', required: true },
      { name: 'method', label: 'Method', type: 'select', options: METHODS.map((m) => [m, m]) },
      { name: 'path', label: 'Path', placeholder: '/items/{id}' },
      { name: 'backend', label: 'Backends', type: 'textarea', placeholder: 'http://10.0.0.5:8080@3', hint: 'URL[@WEIGHT], one a line.' },
      { name: 'timeout_ms', label: 'Timeout (ms)', type: 'number', hint: 'Empty: the default.' },
      { name: 'auth_type', label: 'Auth type', type: 'select', options: [['ANONYMOUS', 'anonymous'], ['APP', 'signed by an app']] },
      { name: 'backend_location', label: 'Backend location', hint: 'local (default), external or a region id.' },
    ],
    onSubmit: async (v) => {
      await call('CreateApi', {
        group: g.name, name: v.name,
        definition: { method: v.method, path: v.path, backends: backendsOf(v.backend), timeout_ms: num(v.timeout_ms) || 0, auth_type: v.auth_type, backend_location: v.backend_location },
      });
      status(`API ${v.name} created.`);
      reload();
    },
  }));

  grid.append(form({
    id: 'edit-group', legend: 'Edit the group', submit: 'Save group',
    fields: [
      { name: 'instance', label: 'Instance', type: 'select', value: g.instance, options: instanceOptions },
      { name: 'host', label: 'Host', value: g.host || '', hint: 'Empty removes it.' },
      { name: 'base_path', label: 'Base path', value: g.base_path || '', hint: 'Empty removes it.' },
    ],
    onSubmit: async (v) => {
      await call('ModifyApiGroup', { name: g.name, instance: v.instance, host: v.host, base_path: v.base_path });
      status(`Group ${g.name} saved.`);
      reload();
    },
  }));

  const apiOptions = [['', '(the whole group)'], ...apis.map((a) => [a.name, a.name])];
  grid.append(form({
    id: 'acl', legend: 'IP access control', submit: 'Save access control',
    fields: [
      { name: 'api', label: 'Applies to', type: 'select', options: apiOptions },
      { name: 'allow', label: 'Allow (CIDRs, one a line)', type: 'textarea', value: g.ip_allow.join('\n') },
      { name: 'deny', label: 'Deny (CIDRs, one a line)', type: 'textarea', value: g.ip_deny.join('\n') },
    ],
    onSubmit: async (v) => {
      await call('SetIpAccessControl', { group: g.name, api: v.api, allow: lines(v.allow), deny: lines(v.deny) });
      status('Access control saved.');
      reload();
    },
  }));
  if (g.api_acls.length) {
    section.append(table('Per-API access control', ['API', 'Allow', 'Deny'], g.api_acls.map((a) => [a.api, a.allow.join(', '), a.deny.join(', ')])));
  }

  // App grants.
  section.append(table('App grants', ['API', 'App', ''], g.grants.map((grant) => {
    const [api, app] = grant.split(':');
    return [api, app, h('button', {
      type: 'button', class: 'danger',
      onclick: async () => {
        try { await call('RevokeAppAuthorization', { group: g.name, api, app }); reload(); } catch (e) { status(`${e.code}: ${e.message}`); }
      },
    }, 'Revoke')];
  }), { id: 'grants' }));
  grid.append(form({
    id: 'grant', legend: 'Authorise an app', submit: 'Authorise',
    fields: [
      { name: 'api', label: 'API', type: 'select', options: apis.map((a) => [a.name, a.name]) },
      { name: 'app', label: 'App', type: 'select', options: apps.map((a) => [a.name, `${a.name} (${a.app_key})`]) },
    ],
    onSubmit: async (v) => {
      await call('AuthorizeApp', { group: g.name, api: v.api, app: v.app });
      status(`${v.app} may call ${v.api}.`);
      reload();
    },
  }));
  const secret = h('div', { id: 'app-secret' });
  grid.append(h('div', {}, form({
    id: 'create-app', legend: 'Create an app', submit: 'Create app',
    fields: [{ name: 'name', label: 'App name', required: true }],
    onSubmit: async (v) => {
      const r = await call('CreateApp', { name: v.name, account: ctx.role === 'operator' ? g.account : '' });
      secret.replaceChildren(h('p', {}, `App ${r.app.name}: AppKey `, h('code', {}, r.app.app_key), '. Its AppSecret is shown only now:'),
        h('p', { class: 'secret' }, r.app_secret));
      // It can be granted at once (a reload would take the secret off the page).
      document.getElementById('grant-app')?.append(h('option', { value: r.app.name }, `${r.app.name} (${r.app.app_key})`));
    },
  }), secret));

  // Throttling policies bound to this group's APIs, and the forms to create and bind one.
  const mine = policies.filter((p) => p.account === g.account);
  section.append(table('Throttling policies', ['Policy', 'Unit', 'API limit', 'Per account', 'Per app', 'Bound to', ''], mine.map((p) => [
    p.name, p.unit, String(p.api_limit), p.user_limit ?? '', p.app_limit ?? '',
    p.bindings.map((b) => `${b.group}/${b.api}@${b.stage}`).join(', '),
    h('span', {}, p.bindings.filter((b) => b.group === g.name).map((b) => h('button', {
      type: 'button', class: 'danger',
      onclick: async () => {
        try { await call('UnbindTrafficControl', { name: p.name, group: b.group, api: b.api, stage: b.stage }); reload(); } catch (e) { status(`${e.code}: ${e.message}`); }
      },
    }, `Unbind ${b.api}@${b.stage}`))),
  ]), { id: 'policies' }));
  grid.append(form({
    id: 'create-policy', legend: 'Create a throttling policy', submit: 'Create policy',
    fields: [
      { name: 'name', label: 'Name', required: true },
      { name: 'unit', label: 'Per', type: 'select', options: ['second', 'minute', 'hour', 'day'].map((u) => [u, u]) },
      { name: 'api_limit', label: 'Calls per API', type: 'number' },
      { name: 'user_limit', label: 'Calls per calling account', type: 'number', hint: 'Optional.' },
      { name: 'app_limit', label: 'Calls per calling app', type: 'number', hint: 'Optional.' },
    ],
    onSubmit: async (v) => {
      await call('CreateTrafficControl', {
        name: v.name, unit: v.unit, api_limit: num(v.api_limit) ?? 0, user_limit: num(v.user_limit) ?? null,
        app_limit: num(v.app_limit) ?? null, account: ctx.role === 'operator' ? g.account : '',
      });
      status(`Policy ${v.name} created.`);
      reload();
    },
  }));
  grid.append(form({
    id: 'bind-policy', legend: 'Bind a policy', submit: 'Bind',
    fields: [
      { name: 'name', label: 'Policy', type: 'select', options: mine.map((p) => [p.name, p.name]) },
      { name: 'api', label: 'API', type: 'select', options: apis.map((a) => [a.name, a.name]) },
      { name: 'stage', label: 'Stage', type: 'select', options: STAGES.map((s) => [s, s]) },
    ],
    onSubmit: async (v) => {
      await call('BindTrafficControl', { name: v.name, group: g.name, api: v.api, stage: v.stage });
      status(`${v.name} bound to ${v.api}@${v.stage}.`);
      reload();
    },
  }));

  section.append(h('p', {}, h('button', {
    type: 'button', class: 'danger', id: 'delete-group',
    onclick: async () => {
      if (!await confirm(`Delete group ${g.name}, with its APIs and their deployments?`, 'Delete group')) return;
      try {
        await call('DeleteApiGroup', { name: g.name, force: true });
        location.hash = '#groups';
      } catch (e) { section.append(failure(e)); }
    },
  }, 'Delete group')));
  section.append(h('p', { class: 'hint' }, `Created ${time(g.created_at_ms)}.`));
}

/** The edit form of API `a` of group `g`, in `slot`: the whole definition, saved at once. */
function editApi(slot, g, a) {
  const d = a.definition || {};
  slot.replaceChildren(form({
    id: 'edit-api', legend: `Edit API ${a.name}`, submit: 'Save API',
    // One backend's errors name `backend`, a list's `backends[i]`.
    aliases: { backend: 'backends' },
    fields: [
      { name: 'method', label: 'Method', type: 'select', value: d.method, options: METHODS.map((m) => [m, m]) },
      { name: 'path', label: 'Path', value: d.path },
      { name: 'backends', label: 'Backends', type: 'textarea', value: backendsText(d), hint: 'URL[@WEIGHT], one a line.' },
      { name: 'timeout_ms', label: 'Timeout (ms)', type: 'number', value: d.timeout_ms || '' },
      { name: 'auth_type', label: 'Auth type', type: 'select', value: d.auth_type || 'ANONYMOUS', options: [['ANONYMOUS', 'anonymous'], ['APP', 'signed by an app']] },
      { name: 'backend_location', label: 'Backend location', value: d.backend_location || '' },
    ],
    onSubmit: async (v) => {
      await call('ModifyApi', {
        group: g.name, name: a.name,
        definition: { method: v.method, path: v.path, backends: backendsOf(v.backends), timeout_ms: num(v.timeout_ms) || 0, auth_type: v.auth_type, backend_location: v.backend_location },
      });
      status(`API ${a.name} saved; deploy it for the change to reach a stage.`);
      reload();
    },
  }));
  slot.querySelector('select, input, textarea').focus();
}
