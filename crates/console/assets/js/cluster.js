// Cluster: the nodes, their roles, the leader, term and applied index, as the node serving
// the console sees them; a warning when there is no leader or a member lags.

import { call } from './api.js';
import { badge, facts, failure, h, table } from './ui.js';

/** Entries a member may be behind before it is shown as lagging. */
const LAG = 100;

export async function render(root) {
  root.append(h('h2', {}, 'Cluster'));
  const body = h('div', { id: 'cluster-body' });
  root.append(body);
  async function refresh() {
    let s;
    try {
      s = await call('DescribeCluster');
    } catch (e) {
      body.replaceChildren(failure(e));
      return;
    }
    const head = s.last_log_index ?? s.applied_index ?? 0;
    const warnings = [];
    if (s.leader_id === null || s.leader_id === undefined) {
      warnings.push(h('p', { class: 'warning bad', role: 'alert', id: 'warn-no-leader' },
        'No leader: the cluster cannot accept changes until a majority of voters elect one.'));
    }
    if (s.not_serving) warnings.push(h('p', { class: 'warning bad', role: 'alert' }, `This node refuses API traffic: ${s.not_serving}`));
    if (s.waiting) warnings.push(h('p', { class: 'warning' }, `Waiting: ${s.waiting}`));
    const rows = s.members.map((m) => {
      const lag = m.matched_index === null || m.matched_index === undefined ? null : Math.max(0, head - m.matched_index);
      if (lag !== null && lag > LAG) {
        warnings.push(h('p', { class: 'warning', role: 'alert' }, `Node ${m.node_id} lags by ${lag} log entries.`));
      }
      const health = lag === null ? h('span', {}, 'unknown here') : lag > LAG ? badge('lagging') : badge('ok');
      return {
        attrs: { 'data-node': m.node_id },
        cells: [String(m.node_id), m.peer_addr, badge(m.role), m.voter ? 'voter' : 'learner',
          m.matched_index ?? '', lag === null ? '' : String(lag), health],
      };
    });
    body.replaceChildren(
      ...warnings,
      facts([
        ['Answering node', String(s.node_id)],
        ['Leader', s.leader_id === null || s.leader_id === undefined ? 'none' : `node ${s.leader_id}`],
        ['Term', String(s.term)],
        ['Applied index', String(s.applied_index ?? '')],
        ['Last log index', String(s.last_log_index ?? '')],
        ['State', s.state],
        ['Cluster id', s.cluster_id || '(not known yet)'],
      ]),
      table('Members', ['Node', 'Peer address', 'Role', 'Kind', 'Matched index', 'Behind', 'Health'], rows, { id: 'members' }),
      h('p', { class: 'hint' }, 'Matched indexes come from the leader\'s replication view; a follower answering knows only its own.'),
    );
  }
  await refresh();
  const timer = setInterval(refresh, 2000);
  return () => clearInterval(timer);
}
