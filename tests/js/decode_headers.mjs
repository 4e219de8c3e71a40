// Reads composed messages, one JSON string (the message's ASCII bytes) per line on stdin,
// and writes one JSON object per line on stdout: what nodemailer's mailparser shows for
// the Subject and for the display names and addresses of From and To. One process reads
// the whole corpus; tests/test_mailparser_decoding.py writes it and compares.
import { createInterface } from 'node:readline';
import { simpleParser } from 'mailparser';

// mailparser gives an address field as {value: [{name, address, group?}]}; the messages
// under test hold no groups, so a group is reported as it is, to fail the comparison.
function mailboxes(field) {
    if (!field) {
        return [];
    }
    return field.value.map(entry => (entry.group ? { group: entry } : [entry.name, entry.address]));
}

const options = { skipHtmlToText: true, skipTextToHtml: true, skipTextLinks: true, skipImageLinks: true };
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
    if (!line) {
        continue;
    }
    const parsed = await simpleParser(Buffer.from(JSON.parse(line), 'utf8'), options);
    const result = { subject: parsed.subject ?? null, from: mailboxes(parsed.from), to: mailboxes(parsed.to) };
    process.stdout.write(JSON.stringify(result) + '\n');
}
