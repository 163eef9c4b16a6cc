// Accounts: balance and state, recharge (the operator's), the month's daily bills as a
// chart, usage per API and the account's events.

import { all, call } from './api.js';
import { barChart } from './chart.js';
import { badge, facts, failure, form, h, status, table, time } from './ui.js';

export async function render(root, ctx, selected) {
  root.append(h('h2', {}, 'Accounts'));
  const { accounts } = await call('DescribeAccounts', {});
  if (ctx.role !== 'operator' && !selected && accounts.length === 1) selected = accounts[0].name;
  root.append(table('Accounts', ['Name', 'State', 'Balance', 'Owed', 'Last day billed'], accounts.map((a) => ({
    attrs: { 'data-account': a.name, 'aria-selected': String(a.name === selected) },
    cells: [h('a', { href: `#accounts/${encodeURIComponent(a.name)}` }, a.name), badge(a.state), a.balance, a.owed, a.last_cycle || ''],
  })), { id: 'accounts' }));
  const account = accounts.find((a) => a.name === selected);
  let stop = () => {};
  if (account) stop = await detail(root, ctx, account);
  if (ctx.role === 'operator') {
    root.append(form({
      id: 'create-account', legend: 'Create an account', submit: 'Create account',
      fields: [{ name: 'name', label: 'Name', required: true }, { name: 'balance_alert', label: 'Balance alert threshold', hint: 'Optional, in dollars.' }],
      onSubmit: async (v) => {
        const { account: a } = await call('CreateAccount', { name: v.name, balance_alert: v.balance_alert || null });
        status(`Account ${a.name} created.`);
        location.hash = `#accounts/${encodeURIComponent(a.name)}`;
      },
    }));
  }
  return stop;
}

function daysIn(month) {
  const [y, m] = month.split('-').map(Number);
  return new Date(Date.UTC(y, m, 0)).getUTCDate();
}

async function detail(root, ctx, a) {
  const section = h('section', { class: 'card', id: 'account-detail', 'aria-labelledby': 'account-title' });
  root.append(section);
  const summary = h('div', { id: 'account-summary' });
  section.append(h('h3', { id: 'account-title' }, `Account ${a.name}`), summary);
  const show = (acc) => {
    // The list's row too, so the page never shows two states of one account.
    const row = document.querySelector(`tr[data-account="${CSS.escape(acc.name)}"]`);
    if (row) {
      row.children[1].replaceChildren(badge(acc.state));
      row.children[2].textContent = acc.balance;
      row.children[3].textContent = acc.owed;
    }
    summary.replaceChildren(facts([
    ['State', h('span', { id: 'account-state' }, badge(acc.state))],
    ['Balance', h('span', { id: 'account-balance' }, acc.balance)],
    ['Owed', acc.owed],
    ['Last day billed', acc.last_cycle || '—'],
    acc.suspended_at_ms ? ['Suspended at', time(acc.suspended_at_ms)] : null,
    acc.purge_at_ms ? ['Purged at', time(acc.purge_at_ms)] : null,
    ['Balance alert', acc.balance_alert || 'none'],
  ]));
  };
  show(a);
  // The state changes with the daily cycle: keep it current while the page is open.
  const timer = setInterval(async () => {
    try {
      const { accounts } = await call('DescribeAccounts', { name: a.name });
      if (accounts[0]) show(accounts[0]);
    } catch { /* the next tick tries again */ }
  }, 2000);

  if (ctx.role === 'operator') {
    section.append(form({
      id: 'recharge', legend: 'Recharge', submit: 'Recharge',
      fields: [{ name: 'amount', label: 'Amount (US dollars)', placeholder: '100.00' }],
      onSubmit: async (v) => {
        // One id per submission: a retried request is applied at most once.
        const { account } = await call('Recharge', { account: a.name, amount: v.amount, request_id: `console-${crypto.randomUUID()}` });
        show(account);
        status(`${a.name} recharged: balance ${account.balance}, ${account.state}.`);
      },
    }));
  }

  const [bills, usage, events] = await Promise.all([
    all('DescribeBills', { account: a.name }, 'bills', 'next_after_day', 'after_day').catch((e) => e),
    all('DescribeUsage', { account: a.name }, 'rows', 'next_after', 'after').catch((e) => e),
    all('DescribeEvents', { account: a.name }, 'events', 'next_after_seq', 'after_seq').catch((e) => e),
  ]);

  // The month of the latest bill, a bar per day.
  section.append(h('h3', {}, 'Daily bills'));
  if (bills instanceof Error) section.append(failure(bills));
  else if (!bills.length) section.append(h('p', { id: 'no-bills' }, 'No bill yet: the first comes after the first day closes.'));
  else {
    const month = bills[bills.length - 1].day.slice(0, 7);
    const byDay = new Map(bills.filter((b) => b.day.startsWith(month)).map((b) => [Number(b.day.slice(8, 10)), b]));
    const bars = Array.from({ length: daysIn(month) }, (_, i) => {
      const b = byDay.get(i + 1);
      return { label: String(i + 1), value: b ? Number(b.total) : 0, title: b ? `${b.day}: ${b.total}` : `${month}-${String(i + 1).padStart(2, '0')}: no bill` };
    });
    const total = bars.reduce((s, b) => s + b.value, 0);
    section.append(h('figure', {}, barChart({ id: 'bills-chart', title: `Daily bills of ${a.name} in ${month}`, bars, unit: '$' }),
      h('figcaption', {}, `${byDay.size} bills in ${month}, ${total.toFixed(2)} in all.`)));
    section.append(table(`Bills of ${month}`, ['Day', 'Total', 'Balance after', 'State after', 'Lines'],
      [...byDay.values()].map((b) => [b.day, b.total, b.balance_after, b.state_after, h('span', { class: 'wrap' }, b.lines.map((l) => `${l.item}: ${l.amount}`).join('; '))]), { id: 'bills' }));
  }

  section.append(h('h3', {}, 'Usage per API'));
  if (usage instanceof Error) section.append(failure(usage));
  else {
    const per = new Map();
    for (const r of usage) {
      const k = `${r.instance}\u0000${r.api}`;
      const cur = per.get(k) || { instance: r.instance, api: r.api, calls: 0, bytes_out: 0, backend_bytes: 0, days: new Set() };
      cur.calls += r.calls;
      cur.bytes_out += r.bytes_out;
      cur.backend_bytes += r.backend_bytes;
      cur.days.add(r.day);
      per.set(k, cur);
    }
    section.append(table('Calls and traffic per API, every day kept', ['Instance', 'API', 'Calls', 'Bytes out', 'Backend bytes', 'Days'],
      [...per.values()].map((u) => [u.instance, u.api, String(u.calls), String(u.bytes_out), String(u.backend_bytes), String(u.days.size)]), { id: 'usage' }));
  }

  section.append(h('h3', {}, 'Events'));
  if (events instanceof Error) section.append(failure(events));
  else {
    section.append(table('Events, newest first', ['When', 'Kind', 'Detail'], events.slice(-50).reverse().map((e) => ({
      attrs: { 'data-kind': e.kind },
      cells: [time(e.at_ms), e.kind, h('span', { class: 'wrap' }, e.detail_json)],
    })), { id: 'events' }));
  }

  section.append(table('Latest ledger entries', ['When', 'What', 'Amount', 'Balance after'],
    a.ledger.slice().reverse().map((l) => [time(l.at_ms), l.what, l.amount, l.balance_after]), { id: 'ledger' }));
  return () => clearInterval(timer);
}
