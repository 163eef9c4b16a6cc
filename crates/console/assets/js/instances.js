// Instances: spec, ceiling, region, charge type and term end; the live request rates of one
// instance across the cluster against its ceiling, every second; a spec change, confirmed
// first.

import { call, traffic } from './api.js';
import { liveChart } from './chart.js';
import { badge, confirm, failure, form, h, status, table, time } from './ui.js';

const CHARGE = { 0: 'pay-as-you-go', 1: 'pay-as-you-go', 2: 'monthly', 3: 'yearly',
  CHARGE_TYPE_UNSPECIFIED: 'pay-as-you-go', CHARGE_TYPE_POSTPAID: 'pay-as-you-go',
  CHARGE_TYPE_MONTH: 'monthly', CHARGE_TYPE_YEAR: 'yearly' };

export async function render(root, ctx, selected) {
  root.append(h('h2', {}, 'Instances'));
  const [{ instances }, { specs }, { regions }] = await Promise.all([
    call('DescribeInstances', {}), call('DescribeSpecs'), call('DescribeRegions')]);
  const rows = instances.map((i) => ({
    attrs: { 'data-instance': i.name, 'aria-selected': String(i.name === selected) },
    cells: [h('a', { href: `#instances/${encodeURIComponent(i.name)}` }, i.name), i.spec, String(i.max_rps), i.region,
      CHARGE[i.charge_type] || String(i.charge_type), time(i.term_end_ms) || '—', badge(i.status || 'running'), i.account],
  }));
  root.append(table('Dedicated instances', ['Name', 'Spec', 'Ceiling (rps)', 'Region', 'Charge type', 'Term end', 'Status', 'Account'], rows, { id: 'instances' }));

  let stop = () => {};
  const chosen = instances.find((i) => i.name === selected);
  if (chosen) stop = detail(root, chosen, specs);

  const fields = [
    { name: 'name', label: 'Name', required: true },
    { name: 'spec', label: 'Spec', type: 'select', options: specs.map((s) => [s.name, `${s.name} (${s.max_rps} rps)`]) },
    { name: 'region', label: 'Region', type: 'select', options: regions.map((r) => [r.id, `${r.id} (${r.name})`]) },
    { name: 'charge_type', label: 'Charge type', type: 'select', options: [['1', 'pay-as-you-go (hourly)'], ['2', 'monthly'], ['3', 'yearly']] },
    { name: 'auto_renew', label: 'Renew subscriptions automatically', type: 'checkbox' },
  ];
  if (ctx.role === 'operator') fields.push({ name: 'account', label: 'Account', hint: 'Empty: the default account.' });
  root.append(form({
    id: 'create-instance', legend: 'Create an instance', submit: 'Create instance', fields,
    onSubmit: async (v) => {
      const { instance } = await call('CreateInstance', {
        name: v.name, spec: v.spec, region: v.region, charge_type: Number(v.charge_type),
        auto_renew: v.auto_renew, account: v.account || '',
      });
      status(`Instance ${instance.name} created.`);
      location.hash = `#instances/${encodeURIComponent(instance.name)}`;
    },
  }));
  return () => stop();
}

/** The selected instance: live chart and spec change. Returns what stops the polling. */
function detail(root, inst, specs) {
  const section = h('section', { class: 'card', id: 'instance-detail', 'aria-labelledby': 'instance-title' });
  section.append(h('h3', { id: 'instance-title' }, `Instance ${inst.name}`));
  const chart = liveChart({
    id: 'live-chart',
    title: `Requests per second on ${inst.name}, across the cluster`,
    series: [{ key: 'admitted', label: 'admitted' }, { key: 'throttled', label: 'throttled' }, { key: 'failed', label: 'failed' }],
  });
  const note = h('p', { class: 'hint', id: 'live-note' }, 'Waiting for the first sample…');
  section.append(chart.el, note);

  section.append(form({
    id: 'change-spec', legend: 'Change spec', submit: 'Change spec…',
    fields: [{ name: 'spec', label: 'New spec', type: 'select', value: inst.spec, options: specs.map((s) => [s.name, `${s.name} (${s.max_rps} rps)`]) }],
    onSubmit: async (v) => {
      const to = specs.find((s) => s.name === v.spec);
      const ok = await confirm(`Change ${inst.name} from ${inst.spec} (${inst.max_rps} rps) to ${v.spec} (${to ? to.max_rps : '?'} rps)? The new hourly price applies from the change.`, 'Change spec');
      if (!ok) return;
      const { instance } = await call('ModifyInstanceSpec', { name: inst.name, spec: v.spec });
      Object.assign(inst, instance);
      status(`${inst.name} is now ${instance.spec} (${instance.max_rps} rps).`);
      const row = document.querySelector(`tr[data-instance="${CSS.escape(inst.name)}"]`);
      if (row) {
        row.children[1].textContent = instance.spec;
        row.children[2].textContent = String(instance.max_rps);
      }
    },
  }));
  root.append(section);

  const samples = [];
  // Each node's last counters: rates are per node, from two samples of that node on its own
  // clock, then added up.
  const prev = new Map();
  let busy = false;
  async function tick() {
    if (busy) return;
    busy = true;
    try {
      const s = await traffic();
      const sum = s.instances.find((i) => i.instance === inst.name);
      if (!sum) return;
      const rates = { admitted: 0, throttled: 0, failed: 0 };
      let rated = 0;
      for (const n of s.nodes) {
        const cur = n.reachable && n.instances.find((i) => i.instance === inst.name);
        // A node missing from this sample adds nothing to this second.
        if (!cur) continue;
        const p = prev.get(n.node_id);
        prev.set(n.node_id, { at: n.at_ms, started: n.started_ms, c: cur });
        if (!p || n.at_ms <= p.at) continue;
        const dt = (n.at_ms - p.at) / 1000;
        // A node that restarted counts from zero again; counters that went down without a
        // restart (an abolished API's counts dropped) add nothing. Never a negative rate.
        const restarted = n.started_ms !== p.started;
        const d = (k) => Math.max(0, cur[k] - (restarted ? 0 : p.c[k])) / dt;
        rates.admitted += Math.max(0, d('requests') - d('throttled'));
        rates.throttled += d('throttled');
        rates.failed += d('failed');
        rated += 1;
      }
      if (rated > 0) {
        samples.push(rates);
        if (samples.length > 60) samples.shift();
      }
      const ceiling = sum.ceiling_rps || inst.max_rps;
      chart.update(samples, ceiling);
      const missing = s.nodes.filter((n) => !n.reachable).map((n) => `node ${n.node_id}: ${n.error}`);
      note.textContent = `Across the cluster: ${s.reporting} of ${s.members} nodes reporting`
        + `${missing.length ? ` (${missing.join('; ')})` : ''}; their shares of the ceiling add up to `
        + `${Math.round(sum.limit_rps)} rps. Updated every second.`;
    } catch (e) {
      note.replaceChildren(failure(e));
    } finally {
      busy = false;
    }
  }
  tick();
  const timer = setInterval(tick, 1000);
  return () => clearInterval(timer);
}
