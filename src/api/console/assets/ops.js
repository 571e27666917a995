// The operations panels: consumer lag with messages/s, dead letters of the last hour and the
// terminator, each read from its JSON endpoint and redrawn on every refresh.

import { getJson } from './api.js';
import {
  breakable, el, formatCount, formatDuration, formatRate, formatTime, setRows, showError,
} from './dom.js';

/**
 * Waits for `request`; shows its failure in the panel's error line (and rethrows it), or
 * clears the line.
 */
async function shown(errorLine, request) {
  try {
    const result = await request;
    showError(errorLine, '');
    return result;
  } catch (e) {
    if (!e.isAuthentication) showError(errorLine, e.message);
    throw e;
  }
}

/** Consumer lag per partition; messages/s from the stored offsets of two successive samples. */
export class LagPanel {
  constructor(root) {
    this.body = root.querySelector('#lag-table tbody');
    this.foot = root.querySelector('#lag-table tfoot');
    this.group = root.querySelector('#lag-group');
    this.error = root.querySelector('#lag-error');
    this.previous = null;
  }

  async refresh() {
    const status = await shown(this.error, getJson('/api/status'));
    const at = Date.parse(status.read_at);
    const before = this.previous;
    const rates = new Map();
    let totalRate = null;
    if (before && at > before.at) {
      totalRate = 0;
      for (const p of status.partitions) {
        const key = `${p.topic}/${p.partition}`;
        const then = before.stored.get(key);
        if (p.stored_offset !== null && then !== undefined) {
          const rate = Math.max(0, p.stored_offset - then) / ((at - before.at) / 1000);
          rates.set(key, rate);
          totalRate += rate;
        }
      }
    }
    this.previous = {
      at,
      stored: new Map(status.partitions
        .filter((p) => p.stored_offset !== null)
        .map((p) => [`${p.topic}/${p.partition}`, p.stored_offset])),
    };

    this.group.textContent = `Group ${status.group}`;
    const rows = status.partitions.map((p) => {
      const key = `${p.topic}/${p.partition}`;
      return el('tr', { 'data-partition': key, class: p.lag ? 'behind' : '' },
        el('td', { class: 'id' }, breakable(p.topic)),
        el('td', { class: 'num' }, p.partition),
        el('td', { class: 'num' }, formatCount(p.stored_offset)),
        el('td', { class: 'num' }, formatCount(p.committed_offset)),
        el('td', { class: 'num' }, formatCount(p.log_start)),
        el('td', { class: 'num' }, formatCount(p.log_end)),
        el('td', { class: 'num lag' }, formatCount(p.lag)),
        el('td', { class: 'num rate' }, formatRate(rates.get(key))),
        el('td', { class: 'time' }, formatTime(p.last_event_time)));
    });
    if (rows.length === 0) {
      rows.push(el('tr', {}, el('td', { colspan: 9, class: 'empty' },
        'No partitions: the group has stored no offsets and its topics have none.')));
    }
    setRows(this.body, rows);
    setRows(this.foot, [el('tr', { id: 'lag-total' },
      el('th', { colspan: 2 }, 'Total'),
      el('td', { class: 'num' }, formatCount(status.total.stored)),
      el('td', {}), el('td', {}),
      el('td', { class: 'num' }, formatCount(status.total.log_end)),
      el('td', { class: 'num lag' }, formatCount(status.total.lag)),
      el('td', { class: 'num rate' }, formatRate(totalRate)),
      el('td', {}))]);
  }
}

/** Dead letters of the last hour: counts by reason and the latest ones (never their bodies). */
export class DeadLetterPanel {
  constructor(root) {
    this.reasons = root.querySelector('#dlq-reasons tbody');
    this.latest = root.querySelector('#dlq-latest tbody');
    this.error = root.querySelector('#dlq-error');
  }

  async refresh() {
    const letters = await shown(this.error, getJson('/api/dead-letters'));
    const reasons = letters.by_reason.map((r) => el('tr', { 'data-reason': r.reason },
      el('td', {}, r.reason), el('td', { class: 'num' }, formatCount(r.count))));
    if (reasons.length === 0) {
      reasons.push(el('tr', {}, el('td', { colspan: 2, class: 'empty' }, 'None in the last hour.')));
    } else {
      reasons.push(el('tr', { class: 'total' }, el('th', {}, 'Total'),
        el('td', { class: 'num' }, formatCount(letters.total))));
    }
    setRows(this.reasons, reasons);
    const latest = letters.latest.map((d) => el('tr', {},
      el('td', { class: 'time' }, formatTime(d.timestamp)),
      el('td', { class: 'id' }, breakable(d.source_topic === null
        ? `${d.topic} ${d.partition}:${d.offset}`
        : `${d.source_topic} ${d.source_partition ?? '?'}:${d.source_offset ?? '?'}`)),
      el('td', {}, d.reason ?? '(none)'),
      el('td', { class: 'detail-text' }, d.detail ?? '')));
    if (latest.length === 0) {
      latest.push(el('tr', {}, el('td', { colspan: 4, class: 'empty' }, 'None.')));
    }
    setRows(this.latest, latest);
  }
}

/** The retention job: its rules, its last run in this process and its next run. */
export class TerminatorPanel {
  constructor(root) {
    this.facts = root.querySelector('#terminator-facts');
  }

  async refresh() {
    const t = await getJson('/api/terminator');
    const last = t.last_run;
    const facts = [
      ['Schedule', t.enabled ? `${t.schedule} (UTC)` : 'disabled in this process'],
      ['Next run', t.enabled ? formatTime(t.next_run) : '–'],
      ['Last run', last ? `${formatTime(last.finished_at)} · ${last.result}` : 'none since this process started'],
      ['Deleted by age', last ? formatCount(last.deleted_by_age) : '–'],
      ['Deleted by count', last ? formatCount(last.deleted_by_count) : '–'],
      ['State rows pruned', last ? formatCount(last.deleted_state) : '–'],
      ['Keeps', `${formatDuration(t.event_max_time_seconds)} by age, `
        + `${t.event_max_number === null ? 'no limit' : formatCount(t.event_max_number)} by count`],
    ];
    if (last && last.error) facts.push(['Error', last.error]);
    this.facts.replaceChildren(...facts.flatMap(([name, value]) => [
      el('dt', {}, name), el('dd', { 'data-fact': name }, value)]));
  }
}

/** Values seen recently, offered as suggestions in the event filters. */
export async function loadFacets(root) {
  const facets = await getJson('/api/facets');
  for (const [id, values] of [
    ['event-types', facets.event_types],
    ['entity-types', facets.entity_types],
    ['attributes', facets.attributes],
  ]) {
    root.querySelector(`#${id}`).replaceChildren(...values.map((v) => el('option', { value: v })));
  }
}
